"""Text-span pruning with a real LM: key-value retrieval when the facts are pruned like visual tokens.

The paper's claim, measured with real weights: FastV-style pruning ranks tokens by the last prompt token's
attention, which favours late positions (recency); dividing out a calibrated position trend should keep the
evidence wherever it lies. No real VLM weights exist offline, so the "visual" span here is text: a real LM
(experiments.real_lm) reads N facts "key: value" (random pronounceable keys, 3-digit values) in its chat
template, then "What is the value of KEY?", and the assistant turn is pre-filled with "The value of KEY is"
so the greedy continuation is the value itself. The engine takes the batch already embedded
(`jaxvlm.engine.api.generate_embedded`, the LM's own token embeddings, 1-D positions 0..T-1) with
`Embedded.visual` marking the PRUNABLE positions: every token of the fact block (a 1 x n grid: media 0,
frame 0, row 0, col = span_index = index within the block). Instruction, question and answer prefix are
text, always kept.

Methods at FastV's layer L (score: head-mean attention of the last prompt token at layer L-1), keeping K of
the span's tokens:
  full        no pruning (the reference)
  fastv       raw scores
  detrended   prune.debiased(fastv, trend=T, padding=False), T fitted on held-out prompts: the stage's own
              pre-debias score over the span (experiments.stage_scores.Probe) fitted and chosen by held-out
              error exactly as `jaxvlm calibrate` does (experiments.calibrate.choose_family)
  random      a seeded uniformly random keep of K span tokens (RandomKeep below; jaxvlm.prune has no random
              method): the draw is per question, made on the host
Score: exact match - the first number in the greedy answer (MAX_NEW tokens) equals the queried value;
chance is about 1/N (the LM copying some value of the span). The queried fact is placed in the first,
middle or last third of the block (question i: placement i mod 3).

    python -m experiments.text_span --lm qwen2.5 --out runs/text_span [--samples 12] [--budgets 64,128,192]

Writes DIR/results.jsonl (one line per question and configuration; a rerun skips what is there, so an
interrupted run resumes), DIR/trend.json (the fitted trend and its report, reused on resume), DIR/table.md
(accuracy with Wilson 95% intervals, the trend's ratio, where the kept tokens lie) and DIR/text_span.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.errors import UserError
from jaxvlm.prune.fastv import FastV

PLACEMENTS = ("early", "middle", "late")
METHODS = ("fastv", "detrended", "random")
INSTRUCTION = "Below is a list of keys and their values, one per line. Read it carefully."
MAX_NEW = 5  # " 482." is 5 tokens for digit-splitting tokenizers (SmolLM2, Qwen2)
SENTINEL = "\x00FACTS\x00"


# ------------------------------------------------------------------------------------------- prompts


@dataclasses.dataclass(frozen=True)
class Question:
    qid: int
    keys: tuple[str, ...]
    values: tuple[int, ...]
    target: int  # index of the queried fact
    placement: str

    @property
    def key(self) -> str:
        return self.keys[self.target]

    @property
    def value(self) -> int:
        return self.values[self.target]


def pronounceable(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct lowercase keys of 4-6 letters alternating consonant / vowel (e.g. "kavo", "melisu")."""
    cons, vow = "bdfgklmnprstvz", "aeiou"
    out: set[str] = set()
    keys: list[str] = []
    while len(keys) < n:
        length = int(rng.integers(4, 7))
        start = int(rng.integers(2))
        k = "".join((cons, vow)[(i + start) % 2][int(rng.integers(len((cons, vow)[(i + start) % 2])))]
                    for i in range(length))
        if k not in out:
            out.add(k)
            keys.append(k)
    return keys


def third_range(placement: str, n: int) -> range:
    """Fact indices of a placement: the first, middle or last third of n facts."""
    if placement not in PLACEMENTS:
        raise UserError(f"placement {placement!r}: expected one of {PLACEMENTS}")
    i = PLACEMENTS.index(placement)
    return range(i * n // 3, (i + 1) * n // 3)


def make_question(qid: int, n_facts: int, seed: int = 0, placement: str | None = None) -> Question:
    """Question `qid` (deterministic in (seed, qid)): n_facts distinct keys, distinct 3-digit values, the
    queried fact drawn uniformly inside its placement's third (default placement: PLACEMENTS[qid % 3])."""
    rng = np.random.default_rng([seed, qid])
    placement = placement or PLACEMENTS[qid % 3]
    keys = pronounceable(rng, n_facts)
    values = rng.choice(np.arange(100, 1000), size=n_facts, replace=False)
    target = int(rng.choice(list(third_range(placement, n_facts))))
    return Question(qid, tuple(keys), tuple(int(v) for v in values), target, placement)


@dataclasses.dataclass(frozen=True)
class Codec:
    """What the prompt builder needs from a tokenizer: encode (no special tokens added; special-token text
    such as "<|im_start|>" becomes its id), decode, and the chat template around one user message."""

    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    chat: Callable[[str], str]  # user content -> full prompt text ending with the assistant header
    eos: int | None = None


def hf_codec(tok) -> Codec:
    """A Codec from a transformers tokenizer (its own chat template)."""

    def chat(content: str) -> str:
        return tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                       add_generation_prompt=True)

    return Codec(lambda s: list(tok(s, add_special_tokens=False)["input_ids"]),
                 lambda ids: tok.decode(ids, skip_special_tokens=True), chat, tok.eos_token_id)


@dataclasses.dataclass(frozen=True)
class Encoded:
    ids: np.ndarray  # (T,) int32
    span: tuple[int, int]  # [start, end) token range of the fact block (prunable)
    fact_starts: tuple[int, ...]  # token index of each fact's first token (len N)
    question: Question


def encode(codec: Codec, q: Question) -> Encoded:
    """Token ids of the prompt: chat head + instruction, the fact block (one line per fact, each line encoded
    on its own so fact boundaries are exact token boundaries), the question and the answer prefix."""
    head, tail = codec.chat(f"{INSTRUCTION}\n\n{SENTINEL}\nWhat is the value of {q.key}?").split(SENTINEL)
    ids = codec.encode(head)
    start, starts = len(ids), []
    for k, v in zip(q.keys, q.values):
        starts.append(len(ids))
        ids += codec.encode(f"{k}: {v}\n")
    end = len(ids)
    ids += codec.encode(tail + f"The value of {q.key} is")
    return Encoded(np.asarray(ids, np.int32), (start, end), tuple(starts), q)


def answer_value(text: str) -> int | None:
    """The first integer in a generated answer (None if there is none)."""
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


# ----------------------------------------------------------------------------------------- the engine


def embedded(embed_table, rows: list[Encoded], noise_seed: int | None = None, length: int | None = None):
    """A jaxvlm.model.Embedded of the encoded prompts, right-padded to `length` (default: the longest; one
    length for every batch = one compiled program per configuration): embeds = the LM's token embeddings
    (`embed_table` (V, D)), positions 0..T-1 (P=1), visual = the fact block. With `noise_seed`, vision_cls
    carries a uniform draw per span token (seeded by (noise_seed, qid)) for RandomKeep."""
    from jaxvlm.model import Embedded

    b, t = len(rows), max([len(r.ids) for r in rows] + [length or 0])
    ids = np.zeros((b, t), np.int32)
    valid, span = np.zeros((b, t), bool), np.zeros((b, t), bool)
    index = np.full((b, t), -1, np.int32)
    noise = np.zeros((b, t), np.float32)
    for i, r in enumerate(rows):
        ids[i, :len(r.ids)], valid[i, :len(r.ids)] = r.ids, True
        s, e = r.span
        span[i, s:e], index[i, s:e] = True, np.arange(e - s)
        if noise_seed is not None:
            noise[i, s:e] = np.random.default_rng([noise_seed, r.question.qid]).random(e - s)
    meta = np.where(span, 0, -1).astype(np.int32)
    x = jnp.asarray(np.asarray(embed_table)[ids] * valid[..., None])
    return Embedded(embeds=x, positions=jnp.asarray(np.broadcast_to(np.arange(t, dtype=np.int32), (1, b, t))),
                    valid=jnp.asarray(valid), visual=jnp.asarray(span), media=jnp.asarray(meta),
                    frame=jnp.asarray(meta), row=jnp.asarray(meta), col=jnp.asarray(index),
                    span_index=jnp.asarray(index), vision_cls=jnp.asarray(noise) if noise_seed is not None else None)


@dataclasses.dataclass(frozen=True)
class RandomKeep(FastV):
    """FastV's stage (layer, keep, budget rule) ranking the span by the per-token uniform draw the host put
    in `Embedded.vision_cls` (see `embedded`): a random keep of K, independent per question."""

    attention_based = False

    def score(self, ctx):
        from jaxvlm.prune import common

        if ctx.vision_cls is None:
            raise ValueError("RandomKeep needs the random draw in Embedded.vision_cls (embedded(..., noise_seed=))")
        return jnp.where(common.candidates(ctx.state), ctx.vision_cls, 0.0)


def schedule(method: str, keep: int, layer: int, trend=None):
    """The pruning schedule of a method ("full": None)."""
    from jaxvlm import prune

    if method == "full":
        return None
    if method == "fastv":
        return prune.fastv(layer=layer, keep=keep)
    if method == "detrended":
        return prune.debiased(prune.fastv(layer=layer, keep=keep), trend=trend, padding=False)
    if method == "random":
        return (RandomKeep(layer=layer, keep=keep),)
    raise UserError(f"unknown method {method!r} (have full, {', '.join(METHODS)})")


def run_batch(text_w, cfg, embed_table, codec: Codec, rows: list[Encoded], method: str, keep: int | None,
              layer: int, trend=None, seed: int = 0, length: int | None = None) -> list[dict]:
    """Generate MAX_NEW greedy tokens for `rows` under one configuration; one result dict per row."""
    from jaxvlm.engine.api import generate_embedded

    emb = embedded(embed_table, rows, noise_seed=seed if method == "random" else None, length=length)
    out = generate_embedded(text_w, cfg, emb, prune=schedule(method, keep, layer, trend), max_new_tokens=MAX_NEW,
                            eos_token_id=codec.eos)
    tokens = np.asarray(out.tokens)
    kept = np.asarray(out.kept[0]) if out.kept else None
    results = []
    for i, r in enumerate(rows):
        q = r.question
        text = codec.decode([int(t) for t in tokens[i]])
        rec = {"qid": q.qid, "placement": q.placement, "method": method, "keep": keep if method != "full" else None,
               "layer": layer, "target": q.target, "n_facts": len(q.keys), "span_tokens": r.span[1] - r.span[0],
               "value": q.value, "answer": text, "correct": answer_value(text) == q.value}
        if kept is not None:
            rec.update(kept_stats(kept[i], r, token_kinds(codec, r)))
        results.append(rec)
    return results


KINDS = ("key", "digit", "separator")


def token_kinds(codec: Codec, r: Encoded) -> np.ndarray:
    """(n_span,) kind of each span token: 0 key letters, 1 value digits, 2 separators (":", spaces, newline)."""
    s, e = r.span
    text = [codec.decode([int(t)]).strip() for t in r.ids[s:e]]
    return np.array([1 if t.isdigit() else 2 if t in ("", ":") else 0 for t in text], np.int32)


def kept_stats(kept_row: np.ndarray, r: Encoded, kinds: np.ndarray | None = None) -> dict:
    """Where a row's kept span tokens lie: count per third of the block, how many of the queried fact's
    tokens (its whole line) survived and, with `kinds` (token_kinds), the share of each kind kept."""
    s, e = r.span
    k = kept_row[kept_row >= 0]
    if np.any((k < s) | (k >= e)):
        raise AssertionError(f"kept index outside the prunable span [{s}, {e}): {k[(k < s) | (k >= e)]}")
    rel = (k - s) / (e - s)
    thirds = [int(np.sum((rel >= i / 3) & (rel < (i + 1) / 3))) for i in range(3)]
    t = r.question.target
    lo, hi = r.fact_starts[t], (r.fact_starts[t + 1] if t + 1 < len(r.fact_starts) else e)
    out = {"kept": int(len(k)), "kept_thirds": thirds, "target_tokens_kept": int(np.sum((k >= lo) & (k < hi))),
           "target_tokens": hi - lo}
    if kinds is not None:
        kept_kind = np.bincount(kinds[k - s], minlength=3)
        out["kept_kinds"] = (kept_kind / np.maximum(np.bincount(kinds, minlength=3), 1)).tolist()
    return out


# ---------------------------------------------------------------------------------------- calibration


def collect_scores(text_w, cfg, embed_table, batches: list[list[Encoded]], layer: int, length: int | None = None):
    """FastV's own score (pre-debias) over the span of every row: (scores (S, N), positions (S, N), valid)."""
    from experiments import stage_scores
    from jaxvlm.engine.api import forward_embedded

    sink = next(stage_scores._IDS)
    stage_scores._SINKS[sink] = []
    probe = stage_scores.Probe(FastV(layer=layer, keep=1), sink)
    rows = []
    try:
        for batch in batches:
            forward_embedded(text_w, cfg, embedded(embed_table, batch, length=length), prune=(probe,)).logits.block_until_ready()
            jax.effects_barrier()
            (scores, span, cand, _, _), = stage_scores._SINKS[sink]
            stage_scores._SINKS[sink].clear()
            rows += [(scores[b][cand[b]], span[b][cand[b]]) for b in range(len(batch))]
    finally:
        stage_scores._SINKS.pop(sink, None)
    n = max(len(s) for s, _ in rows)
    scores, pos = np.zeros((len(rows), n)), np.full((len(rows), n), -1, np.int64)
    for j, (s, x) in enumerate(rows):
        scores[j, :len(s)], pos[j, :len(s)] = s, x
    return scores, pos, (pos >= 0).astype(np.float64)


def fit_trend(scores, positions, valid):
    """The trend `jaxvlm calibrate --model` would write: families fitted, chosen by held-out R^2."""
    from experiments.calibrate import choose_family

    return choose_family(scores, valid, positions)


# ------------------------------------------------------------------------------------------- results


def load_results(path: Path) -> list[dict]:
    """Lines of results.jsonl (a truncated last line from an interrupted write is dropped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def result_key(rec: dict) -> tuple:
    return rec["method"], rec["keep"], rec["layer"], rec["qid"]


def pending(configs: list[tuple[str, int | None]], qid_batches: list[list[int]], layer: int, done: set,
            reference: int | None = None) -> list[tuple]:
    """The work still missing, batch by batch (so an interrupted run has every configuration on the same
    questions): (method, keep, [qids]) per question batch and configuration; the unpruned "full" reference
    only on qids < `reference` (None: all)."""
    out = []
    for qids in qid_batches:
        for method, keep in configs:
            miss = [q for q in qids if (method, keep, layer, q) not in done
                    and (method != "full" or reference is None or q < reference)]
            if miss:
                out.append((method, keep, miss))
    return out


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (95% by default)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def summarize(results: list[dict]) -> dict:
    """{(method, keep, placement or "all"): {k, n, acc, lo, hi, thirds, target_kept}}."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        for p in (r["placement"], "all"):
            groups.setdefault((r["method"], r["keep"], p), []).append(r)
    out = {}
    for key, rs in groups.items():
        k, n = sum(bool(r["correct"]) for r in rs), len(rs)
        lo, hi = wilson(k, n)
        cell = {"k": k, "n": n, "acc": k / n, "lo": lo, "hi": hi}
        if "kept_thirds" in rs[0]:
            th = np.sum([r["kept_thirds"] for r in rs], axis=0)
            cell["thirds"] = (th / max(th.sum(), 1)).tolist()
            cell["target_kept"] = float(np.mean([r["target_tokens_kept"] == r["target_tokens"] for r in rs]))
            kinds = [r["kept_kinds"] for r in rs if "kept_kinds" in r]
            if kinds:
                cell["kinds"], cell["kinds_n"] = np.mean(kinds, axis=0).tolist(), len(kinds)
        out[key] = cell
    return out


def table_md(summary: dict, meta: dict) -> str:
    """Markdown: accuracy (Wilson 95%) per method x budget x placement, kept-token shares per third, and
    the share of questions whose whole queried fact line survived."""
    cols = PLACEMENTS + ("all",)
    configs = sorted({(m, k) for m, k, _ in summary}, key=lambda c: (c[0] != "full", c[1] or 0, METHODS.index(c[0])
                                                                      if c[0] in METHODS else -1))
    fmt = lambda c: f"{c['acc']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}] (n={c['n']})"  # noqa: E731
    lines = [f"LM: {meta['lm']}; {meta['n_facts']} facts, span {meta['span_tokens']} tokens (prompt ~{meta['prompt_tokens']}); "
             f"FastV layer {meta['layer']} (scores at layer {meta['layer'] - 1}); chance ~1/{meta['n_facts']}.",
             f"Trend: {meta['trend']['family']} fitted on {meta['calibration_prompts']} held-out prompts, "
             f"T(end)/T(0) = {meta['trend_ratio']:.3g} over the span; held-out R^2 {meta['trend_r2']:.3f}.", "",
             "| method | K | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for m, k in configs:
        cells = [fmt(summary[(m, k, p)]) if (m, k, p) in summary else "-" for p in cols]
        lines.append(f"| {m} | {k if k is not None else 'all'} | " + " | ".join(cells) + " |")
    lines += ["", "Kept span tokens per third of the block (early / middle / late share, all questions), the share "
              "of questions whose whole queried line was kept, and the share of the span's key-letter / value-digit "
              "/ separator tokens kept (questions with that record):", "",
              "| method | K | early | middle | late | queried line kept | key | digits | separators (n) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for m, k in configs:
        c = summary.get((m, k, "all"), {})
        if "thirds" in c:
            e, mi, la = c["thirds"]
            kinds = " | ".join(f"{v:.2f}" for v in c["kinds"]) + f" ({c['kinds_n']})" if "kinds" in c else "- | - | -"
            lines.append(f"| {m} | {k} | {e:.2f} | {mi:.2f} | {la:.2f} | {c['target_kept']:.2f} | {kinds} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({k for m, k, _ in summary if k is not None})
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
    for ax, p in zip(axes, PLACEMENTS):
        full = summary.get(("full", None, p))
        if full:
            ax.axhspan(full["lo"], full["hi"], color="0.85")
            ax.axhline(full["acc"], color="k", lw=1, label="unpruned")
        for m, style in zip(METHODS, ("o-", "s-", "^--")):
            pts = [(k, summary[(m, k, p)]) for k in budgets if (m, k, p) in summary]
            if pts:
                ks, cs = zip(*pts)
                acc = np.array([c["acc"] for c in cs])
                err = np.array([[c["acc"] - c["lo"] for c in cs], [c["hi"] - c["acc"] for c in cs]])
                ax.errorbar(ks, acc, yerr=err, fmt=style, capsize=3, label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(k) for k in budgets])
        ax.set_title(f"queried fact {p}")
        ax.set_xlabel("span tokens kept (K)")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("exact-match accuracy (95% Wilson)")
    axes[-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="q", file=sys.stderr, dynamic_ncols=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.text_span", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm", default="qwen2.5", choices=("smollm2", "qwen2.5"))
    ap.add_argument("--out", required=True, help="output folder (results.jsonl there is resumed)")
    ap.add_argument("--samples", type=int, default=12, help="questions per placement")
    ap.add_argument("--reference", type=int, default=None,
                    help="questions per placement for the unpruned reference (default: --samples)")
    ap.add_argument("--budgets", default="16,32,64", help="comma-separated K (span tokens kept)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--facts", type=int, default=32, help="facts per prompt")
    ap.add_argument("--layer", type=int, default=2, help="FastV layer K (scores at layer K-1)")
    ap.add_argument("--calibration", type=int, default=12, help="held-out prompts the trend is fitted on")
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile-cache", default=None, help="persistent compilation cache directory")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: write table.md and the figure from the results already in --out")
    args = ap.parse_args(argv)
    try:
        budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        raise UserError(f"--budgets {args.budgets!r}: expected comma-separated integers") from None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = sorted(set(methods) - set(METHODS))
    if bad or not budgets or min(budgets) < 1 or args.samples < 1 or args.facts < 3 or args.layer < 1:
        raise UserError(f"--methods {args.methods!r} / --budgets {args.budgets!r} / --samples {args.samples} / "
                        f"--facts {args.facts} / --layer {args.layer}: need methods from {METHODS}, budgets >= 1, "
                        "samples >= 1, facts >= 3, layer >= 1")
    from experiments import real_lm
    from jaxvlm import compile_cache, debias

    compile_cache.enable_from(args.compile_cache)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = real_lm.load_lm(args.lm)
    codec = hf_codec(real_lm.tokenizer(args.lm))
    text_w = jax.tree.map(jnp.asarray, lm.weights)
    table = lm.weights["embed"]

    def chunks(items):
        return [items[i:i + args.batch] for i in range(0, len(items), args.batch)]

    qids = list(range(3 * args.samples))
    rows = {q: encode(codec, make_question(q, args.facts, args.seed)) for q in qids}
    cal = [encode(codec, make_question(q, args.facts, args.seed + 1)) for q in range(args.calibration)]  # held out
    length = max(len(r.ids) for r in [*rows.values(), *cal])
    trend_file = out / "trend.json"
    if "detrended" in methods and not trend_file.is_file() and not args.report_only:
        print(f"calibrating on {len(cal)} held-out prompts (layer {args.layer - 1} scores)", file=sys.stderr)
        trend, rep = fit_trend(*collect_scores(text_w, lm.cfg, table, chunks(cal), args.layer, length))
        trend_file.write_text(json.dumps({"trend": trend.to_dict(), "report": rep, "layer": args.layer}, indent=1))
    trend_info = json.loads(trend_file.read_text()) if trend_file.is_file() else None
    trend = debias.Trend.from_dict(trend_info["trend"]) if trend_info else None

    res_path = out / "results.jsonl"
    done = {result_key(r) for r in load_results(res_path)}
    configs = [("full", None)] + [(m, k) for k in budgets for m in methods]
    reference = 3 * (args.samples if args.reference is None else args.reference)
    todo = [] if args.report_only else pending(configs, chunks(qids), args.layer, done, reference)
    bar = progress(sum(len(q) for _, _, q in todo))
    with open(res_path, "a") as f:
        for method, keep, miss in todo:
            bar.set_description(f"{method} K={keep}")
            for rec in run_batch(text_w, lm.cfg, table, codec, [rows[q] for q in miss], method, keep, args.layer,
                                 trend, args.seed, length):
                f.write(json.dumps({"lm": args.lm, **rec}) + "\n")
            f.flush()
            bar.update(len(miss))
    bar.close()
    wanted = set(configs)
    results = [r for r in load_results(res_path) if (r["method"], r["keep"]) in wanted and r["qid"] in rows
               and r["layer"] == args.layer]
    summary = summarize(results)
    spans = [r.span[1] - r.span[0] for r in rows.values()]
    rep = trend_info["report"] if trend_info else {}
    meta = {"lm": f"{args.lm} ({lm.arch}, GGUF dequantised)", "n_facts": args.facts, "layer": args.layer,
            "span_tokens": f"{min(spans)}-{max(spans)}", "prompt_tokens": int(np.mean([len(r.ids) for r in rows.values()])),
            "trend": trend_info["trend"] if trend_info else {"family": "none"},
            "trend_ratio": trend.ratio(max(spans)) if trend else float("nan"),
            "trend_r2": rep.get("holdout", {}).get("r2", float("nan")), "calibration_prompts": rep.get("samples", 0)}
    (out / "table.md").write_text(table_md(summary, meta))
    plot(summary, out / "text_span.png", f"{args.lm}: key-value retrieval, fact span pruned at layer {args.layer}")
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    from jaxvlm.errors import run_cli

    sys.exit(run_cli("python -m experiments.text_span", main, None))
