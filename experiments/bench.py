"""Prefill / decode timing and FLOPs: jaxvlm vs transformers, unpruned vs FastV (CPU by default).

    python -m experiments.bench [--tokens 700] [--keeps 64,128,192] [--reps 5] [--new 32] [--json out.json]
    jaxvlm bench ...

Model: the LLM of a LLaVA-shaped model (hidden 512, 8 layers, 8 heads, FFN 1408, vocab 32000: 58.5M
parameters with embeddings and head), random weights built as transformers' LlamaForCausalLM and copied into
jaxvlm's decoder layout, so both frameworks run the same weights. Prompt: 35 text tokens, 576 visual tokens
(random embeddings standing in for the projector output), the rest text (default 700 tokens in total).
The vision tower is not timed: it is the same for every schedule and outside the LLM comparison.

Protocol: every program is compiled and warmed up first (compile time reported apart); then the measurements
of all variants are interleaved round by round (ABAB..., so machine load drifts hit all alike) and the median
of `--reps` rounds is reported, synchronised with block_until_ready. Prefill = the time to the first token:
transformers `model(inputs_embeds, logits_to_keep=1)` (what its generate runs), jaxvlm `generate` with
max_new_tokens=1 (segments, stages, last-token logits, argmax). Decode per token = (time for `--new` tokens -
time for 1 token) / (`--new` - 1), greedy, no EOS, both sides.
FLOPs per layer: 4 n d^2 + 2 n^2 d + 3 n d m (PRUNING.md; n tokens entering the layer), summed over layers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

HIDDEN, LAYERS, HEADS, FFN, VOCAB = 512, 8, 8, 1408, 32000
N_VISUAL, PREFIX = 576, 35


def layer_flops(n: int, d: int = HIDDEN, m: int = FFN) -> float:
    """One decoder layer over n tokens, the FFN counted as 3 matrices (PRUNING.md)."""
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def last_layer_flops(n: int, d: int = HIDDEN, m: int = FFN) -> float:
    """Generation's final layer (decoder.layer_at_rows): keys/values for n tokens, the rest for one token."""
    return 2 * n * d * d + 2 * d * d + 2 * n * d + 3 * d * m


def schedule_flops(n_tokens: int, stage_layer: int | None, keep: int | None, layers: int = LAYERS) -> float:
    """Prefill FLOPs of generation with one FastV-style stage (what the engine computes, in both variants)."""
    sizes = [n_tokens if stage_layer is None or i < stage_layer else n_tokens - N_VISUAL + keep
             for i in range(layers)]
    return sum(layer_flops(n) for n in sizes[:-1]) + last_layer_flops(sizes[-1])


def build_models(seed: int = 0):
    """(torch LlamaForCausalLM, jaxvlm text weights dict, TextConfig) with identical float32 weights."""
    import jax.numpy as jnp
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from jaxvlm.config import parse_text_config

    hf = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
              num_attention_heads=HEADS, num_key_value_heads=HEADS, rms_norm_eps=1e-5, max_position_embeddings=4096,
              tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**hf, attn_implementation="sdpa")).float().eval()
    cfg = parse_text_config(hf)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    d, n, h, L = HIDDEN, HEADS, HIDDEN // HEADS, LAYERS

    def stack(fmt, fn):
        return jnp.asarray(np.stack([fn(sd[fmt.format(i)]) for i in range(L)]))

    pre = "model.layers.{}."
    layers = {
        "attn_norm": stack(pre + "input_layernorm.weight", lambda w: w),
        "wq": stack(pre + "self_attn.q_proj.weight", lambda w: w.T.reshape(d, n, h)),
        "wk": stack(pre + "self_attn.k_proj.weight", lambda w: w.T.reshape(d, n, h)),
        "wv": stack(pre + "self_attn.v_proj.weight", lambda w: w.T.reshape(d, n, h)),
        "wo": stack(pre + "self_attn.o_proj.weight", lambda w: w.T.reshape(n, h, d)),
        "mlp_norm": stack(pre + "post_attention_layernorm.weight", lambda w: w),
        "w_gate": stack(pre + "mlp.gate_proj.weight", lambda w: w.T),
        "w_up": stack(pre + "mlp.up_proj.weight", lambda w: w.T),
        "w_down": stack(pre + "mlp.down_proj.weight", lambda w: w.T),
    }
    weights = {"embed": jnp.asarray(sd["model.embed_tokens.weight"]), "norm": jnp.asarray(sd["model.norm.weight"]),
               "lm_head": jnp.asarray(sd["lm_head.weight"].T), "layers": layers}
    return model, weights, cfg


def make_prompt(weights, n_tokens: int, seed: int = 0):
    """(embeds (1, T, D) float32 numpy, visual (1, T) bool): text, 576 visual stand-ins, text."""
    rng = np.random.default_rng(seed)
    embed = np.asarray(weights["embed"])
    ids = rng.integers(3, VOCAB, size=n_tokens)
    x = embed[ids].copy()
    visual = np.zeros(n_tokens, bool)
    visual[PREFIX:PREFIX + N_VISUAL] = True
    x[visual] = rng.standard_normal((N_VISUAL, HIDDEN)).astype(np.float32) * float(embed.std())
    return x[None].astype(np.float32), visual[None]


def embedded(x, visual):
    import jax.numpy as jnp

    from jaxvlm.model import Embedded

    b, t, _ = x.shape
    span = np.where(visual, np.cumsum(visual, axis=1) - 1, -1).astype(np.int32)
    return Embedded(
        embeds=jnp.asarray(x), positions=jnp.asarray(np.arange(t, dtype=np.int32)[None, None].repeat(b, 1)),
        valid=jnp.ones((b, t), bool), visual=jnp.asarray(visual), media=jnp.asarray(np.where(visual, 0, -1)),
        frame=jnp.asarray(np.where(visual, 0, -1)), row=jnp.asarray(np.where(span >= 0, span // 24, -1)),
        col=jnp.asarray(np.where(span >= 0, span % 24, -1)), span_index=jnp.asarray(span),
    )


class JaxRunner:
    """A jaxvlm generate program with everything host-side done once (what a serving loop would hold)."""

    def __init__(self, weights, cfg, emb, schedule, max_new: int):
        import jax

        from jaxvlm.engine import api

        plan, _, state = api._embedded_plan(cfg, emb, schedule, max_new)
        eos, pad = api._eos_pad(None, None)
        per_layer = api.per_layer_weights(weights)
        self.call = lambda: api._generate_embedded(weights, state, jax.random.key(0), api._sampling(0.0, 1.0),
                                                   cfg=cfg, plan=plan, eos=eos, pad_id=pad, mesh=None,
                                                   output_logits=False, layer_list=per_layer)[0].block_until_ready()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def matmul_gflops(reps: int = 5) -> tuple[float, float]:
    """Plain float32 matmul throughput of this machine, XLA vs torch (2048 x 2048 x 2048)."""
    import jax
    import jax.numpy as jnp
    import torch

    a = jnp.asarray(np.random.default_rng(0).standard_normal((2048, 2048), np.float32))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    ta = torch.as_tensor(np.asarray(a))
    torch.mm(ta, ta)
    tj = statistics.median(timed(lambda: f(a).block_until_ready()) for _ in range(reps))
    tt = statistics.median(timed(lambda: torch.mm(ta, ta)) for _ in range(reps))
    flops = 2 * 2048 ** 3
    return flops / tj / 1e9, flops / tt / 1e9


def layer_breakdown(weights, cfg, n: int, reps: int = 7) -> dict:
    """Where one prefill layer's time goes at n tokens (jaxvlm vs torch for the attention core), and the
    weight-streaming floor of a decode step. Minimum of `reps` runs (the least disturbed by other load)."""
    import jax
    import jax.numpy as jnp
    import torch

    from jaxvlm.layers import attention, causal_mask
    from jaxvlm.models import decoder

    lw = jax.tree.map(lambda w: w[0], weights["layers"])
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((1, n, HIDDEN), np.float32))
    pos = jnp.arange(n, dtype=jnp.int32)[None, None]
    mask = causal_mask(jnp.ones((1, n), bool))
    h = HIDDEN // HEADS
    q, k, v = (jnp.asarray(rng.standard_normal((1, n, HEADS, h), np.float32)) for _ in range(3))

    @jax.jit
    def projections(x):  # norm, q/k/v, RoPE, output projection: everything of the attention block but the core
        cos, sin = decoder.rotary(pos, cfg)
        q, k, v = decoder.project_qkv(lw, x, cos, sin, cfg)
        return x + jnp.einsum("BTNH,NHD->BTD", q + k + v, lw["wo"])

    core = jax.jit(lambda q, k, v: attention(q, k, v, mask, causal=True))
    mlp = jax.jit(lambda x: x + decoder.mlp(lw, x, cfg))
    head = jax.jit(lambda x: x[:, -1:] @ weights["lm_head"])  # one decode-step vocabulary matvec
    tq, tk, tv = (torch.as_tensor(np.array(a)).transpose(1, 2).contiguous() for a in (q, k, v))

    def best(f):
        f()
        return min(timed(f) for _ in range(reps))

    t = {
        "qkv/o projections + norm + rope": best(lambda: projections(x).block_until_ready()),
        "attention core (jaxvlm)": best(lambda: core(q, k, v).block_until_ready()),
        "attention core (torch sdpa, causal)": best(
            lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)),
        "mlp": best(lambda: mlp(x).block_until_ready()),
        "lm_head matvec (decode)": best(lambda: head(x).block_until_ready()),
    }
    flops = {"qkv/o projections + norm + rope": 2 * 4 * n * HIDDEN ** 2,
             "attention core (jaxvlm)": 2 * n * n * HIDDEN, "attention core (torch sdpa, causal)": 2 * n * n * HIDDEN,
             "mlp": 2 * 3 * n * HIDDEN * FFN}
    out = {k: {"ms": 1e3 * v} for k, v in t.items()}
    for k, f in flops.items():
        out[k]["gflops_per_s"] = f / t[k] / 1e9  # causal attention: counted as the full n^2 product (PRUNING.md)
    gbps = HIDDEN * VOCAB * 4 / t["lm_head matvec (decode)"] / 1e9
    step_bytes = sum(a.nbytes for a in jax.tree.leaves(weights)) - weights["embed"].nbytes
    out["decode floor"] = {"weight_mb_per_token": step_bytes / 1e6, "stream_gb_per_s": gbps,
                           "ms_per_token": 1e3 * step_bytes / (gbps * 1e9)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jaxvlm bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=700, help="prompt length (576 visual tokens inside)")
    p.add_argument("--keeps", default="64,128,192", help="FastV budgets (visual tokens kept of 576)")
    p.add_argument("--layer", type=int, default=2, help="FastV layer K")
    p.add_argument("--reps", type=int, default=5, help="measured rounds (median reported)")
    p.add_argument("--new", type=int, default=32, help="tokens generated for the decode measurement")
    p.add_argument("--no-torch", action="store_true", help="skip transformers")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    from jaxvlm.errors import UserError

    try:
        keeps = [int(k) for k in args.keeps.split(",") if k]
    except ValueError:
        raise UserError(f"--keeps {args.keeps!r}: expected comma-separated integers, e.g. 64,128") from None
    if not all(0 < k <= N_VISUAL for k in keeps):
        raise UserError(f"--keeps {args.keeps!r}: each budget must be in 1..{N_VISUAL}")
    if args.tokens < N_VISUAL + 2:
        raise UserError(f"--tokens {args.tokens}: the prompt holds {N_VISUAL} visual tokens, so needs >= {N_VISUAL + 2}")
    if not 0 <= args.layer < LAYERS:
        raise UserError(f"--layer {args.layer}: the bench model has layers 0..{LAYERS - 1}")
    if args.reps < 1 or args.new < 1:
        raise UserError(f"--reps {args.reps} and --new {args.new} must be at least 1")

    import jax
    import torch

    from jaxvlm import prune

    if args.threads:
        torch.set_num_threads(args.threads)
    model, weights, cfg = build_models()
    n_params = sum(int(np.prod(w.shape)) for w in jax.tree.leaves(weights))
    x, visual = make_prompt(weights, args.tokens)
    emb = embedded(x, visual)
    print(f"model: {n_params / 1e6:.1f}M parameters (LLM of a LLaVA-shaped model), prompt {args.tokens} tokens "
          f"({N_VISUAL} visual), backend {jax.default_backend()}, {jax.device_count()} device(s), "
          f"torch threads {torch.get_num_threads()}")

    variants = {"unpruned": None}
    variants.update({f"fastv keep {k}": prune.fastv(layer=args.layer, keep=k) for k in keeps})
    # The same FastV budget with the release's debiasing (cubic trend + padding suppression): its cost over
    # plain FastV is the debiasing overhead (same kept count, same FLOPs).
    debias_keep = keeps[len(keeps) // 2]
    variants[f"debiased {debias_keep}"] = prune.debiased_fastv(layer=args.layer, keep=debias_keep)
    runners, compile_s = {}, {}
    for name, sched in variants.items():
        for new in (1, args.new):
            r = JaxRunner(weights, cfg, emb, sched, new)
            compile_s[(name, new)] = timed(r.call)
            r.call()  # warm-up
            runners[(name, new)] = r

    xt = torch.as_tensor(x)
    torch_calls = {}
    if not args.no_torch:
        def t_prefill():
            with torch.no_grad():
                model(inputs_embeds=xt, logits_to_keep=1, use_cache=True)

        def t_generate(n):
            def run():
                with torch.no_grad():
                    model.generate(inputs_embeds=xt, attention_mask=torch.ones(xt.shape[:2], dtype=torch.long),
                                   max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            return run

        torch_calls = {"prefill": t_prefill, "gen1": t_generate(1), "genN": t_generate(args.new)}
        for f in torch_calls.values():
            f()

    times: dict = {k: [] for k in list(runners) + list(torch_calls)}
    for _ in range(args.reps):
        for k, r in runners.items():
            times[k].append(timed(r.call))
        for k, f in torch_calls.items():
            times[k].append(timed(f))
    med = {k: statistics.median(v) for k, v in times.items()}

    results = {"tokens": args.tokens, "params_m": n_params / 1e6, "reps": args.reps, "variants": {}}
    base_flops = schedule_flops(args.tokens, None, None)
    base_t = med[("unpruned", 1)]
    print(f"\n{'variant':<16}{'prefill ms':>11}{'vs unpruned':>13}{'FLOPs ratio':>13}{'decode ms/tok':>15}"
          f"{'compile s':>11}")
    for name, sched in variants.items():
        stage_layer = sched[0].layer if sched else None
        keep = sched[0].keep if sched else None
        flops = schedule_flops(args.tokens, stage_layer, keep)
        pre = med[(name, 1)]
        dec = (med[(name, args.new)] - pre) / (args.new - 1)
        comp = compile_s[(name, 1)] - pre
        results["variants"][name] = {"prefill_ms": 1e3 * pre, "time_ratio": pre / base_t,
                                     "flops_ratio": flops / base_flops, "decode_ms_per_token": 1e3 * dec,
                                     "compile_s": comp, "prefill_samples_ms": [1e3 * t for t in times[(name, 1)]]}
        print(f"{name:<16}{1e3 * pre:>11.1f}{pre / base_t:>13.3f}{flops / base_flops:>13.3f}{1e3 * dec:>15.2f}"
              f"{comp:>11.1f}")

    plain, debiased = med[(f"fastv keep {debias_keep}", 1)], med[(f"debiased {debias_keep}", 1)]
    results["debias_overhead"] = debiased / plain - 1
    print(f"debiasing overhead on FastV keep {debias_keep} prefill: {100 * (debiased / plain - 1):+.2f}%")

    if torch_calls:
        tp = med["prefill"]
        td = (med["genN"] - med["gen1"]) / (args.new - 1)
        jd = results["variants"]["unpruned"]["decode_ms_per_token"] / 1e3
        results["transformers"] = {"prefill_ms": 1e3 * tp, "decode_ms_per_token": 1e3 * td,
                                   "generate1_ms": 1e3 * med["gen1"],
                                   "prefill_samples_ms": [1e3 * t for t in times["prefill"]]}
        results["jax_vs_torch"] = {"prefill_ratio": base_t / tp, "decode_speedup": td / jd}
        print(f"\nunpruned, same weights, same run: prefill jaxvlm {1e3 * base_t:.1f} ms vs transformers "
              f"{1e3 * tp:.1f} ms (ratio {base_t / tp:.2f}; transformers generate(max_new_tokens=1) "
              f"{1e3 * med['gen1']:.1f} ms); decode jaxvlm {1e3 * jd:.2f} ms/token vs transformers "
              f"{1e3 * td:.2f} ms/token ({td / jd:.1f}x)")

    gj, gt = matmul_gflops()
    n_bucket = -(-args.tokens // 64) * 64
    bd = layer_breakdown(weights, cfg, n_bucket)
    results["machine"] = {"matmul_gflops_xla": gj, "matmul_gflops_torch": gt, "layer_breakdown": bd}
    print(f"\nwhere the time goes (min of 7): 2048^3 matmul XLA {gj:.0f} GFLOP/s, torch {gt:.0f} GFLOP/s; "
          f"one prefill layer at n={n_bucket}:")
    for k, v in bd.items():
        if k == "decode floor":
            print(f"  decode floor: {v['weight_mb_per_token']:.0f} MB of weights streamed per token at "
                  f"{v['stream_gb_per_s']:.0f} GB/s (lm_head matvec) = {v['ms_per_token']:.1f} ms/token")
        else:
            rate = f" ({v['gflops_per_s']:.0f} GFLOP/s)" if "gflops_per_s" in v else ""
            print(f"  {k:<38}{v['ms']:7.2f} ms{rate}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
