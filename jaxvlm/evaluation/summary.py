"""The summary of an --out folder: every `<bench>/<schedule>/answers.jsonl` scored, tabulated and plotted.

    rows = collect(out_dir)            # one dict per (benchmark, schedule)
    write(out_dir)                     # summary.md, summary.json, summary.png under out_dir

Per row: the benchmark's headline metric (HEADLINE; None where the set is server- or judge-scored or the
answers are incomplete, with the reason in `note`), mean kept visual tokens per answer (the last pruning
stage's count; all visual tokens unpruned), samples/s (generation only, compiles excluded, over every run
of the sidecar), and the prefill FLOPs ratio to the unpruned model (experiments.bench's per-layer model over
the answered lines' real token counts and the schedule's stage layers); below the table, the programs each
schedule compiled and the wall seconds of the batches that compiled them (over every run of the sidecar).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxvlm.errors import UserError
from jaxvlm.evaluation import base, store

# benchmark -> (metric name in ScoreResult.metrics, scale to the table's unit)
HEADLINE = {
    "gqa": ("accuracy", 1.0), "textvqa": ("accuracy", 1.0), "vqav2": ("accuracy", 1.0),
    "scienceqa": ("img_accuracy", 1.0), "pope": ("f1_mean", 100.0), "mme": ("perception", 1.0),
    "mmbench": ("circular_accuracy", 1.0), "mmbench_cn": ("circular_accuracy", 1.0),
}


def method_of(spec: str) -> tuple[str, bool]:
    """(method name, debiased?) of a --prune spec: `debiased_fastv:keep=64` -> ("fastv", True)."""
    name = spec.partition(":")[0].strip() or "none"
    return (name[len("debiased_"):], True) if name.startswith("debiased_") else (name, False)


def flops_ratio(answers: list[dict], stage_layers: list[int], shape: dict) -> float | None:
    """Prefill FLOPs of the answered lines with their kept counts over the same lines unpruned."""
    from experiments.bench import layer_flops

    if not shape:
        return None
    d, m, n_layers = shape["hidden_size"], shape["intermediate_size"], shape["num_layers"]
    pruned = full = 0.0
    for a in answers:
        meta = a.get("metadata") or {}
        if "prompt_tokens" not in meta:
            continue
        n, v, kept = meta["prompt_tokens"], meta.get("visual_tokens", 0), meta.get("kept", [])
        for layer in range(n_layers):
            active = [k for k, at in zip(kept, stage_layers) if at <= layer]
            pruned += layer_flops(n - v + active[-1] if active else n, d, m)
            full += layer_flops(n, d, m)
    return pruned / full if full else None


def kept_tokens(answers: list[dict]) -> float | None:
    """Mean over the answered lines with visual tokens of the last stage's kept count (all of them unpruned)."""
    counts = [(m.get("kept") or [m["visual_tokens"]])[-1] for m in (a.get("metadata") or {} for a in answers)
              if m.get("visual_tokens")]
    return float(np.mean(counts)) if counts else None


def headline(benchmark: str, answers: list[dict], identity: dict) -> tuple[float | None, str]:
    """(score, note): the headline metric as the benchmark's scorer computes it, or None and why not."""
    from jaxvlm import evaluation

    if benchmark not in HEADLINE:
        return None, "server- or judge-scored: see jaxvlm score's artifacts"
    metric, scale = HEADLINE[benchmark]
    try:
        result = evaluation.benchmark(benchmark).score(identity["data"], answers, benchmark=benchmark)
    except UserError as e:
        return None, str(e).splitlines()[0]
    value = result.metrics.get(metric)
    return (None if value is None else float(value) * scale), ""


def collect(out_dir: str | Path) -> list[dict]:
    rows = []
    for path in sorted(Path(out_dir).glob("*/*/answers.jsonl")):
        meta = store.read_sidecar(path)
        if not meta:
            continue
        identity, runs = meta["identity"], meta.get("runs", [])
        answers = base.read_answers(path)
        spec = path.parent.name
        method, debiased = method_of(runs[-1].get("spec", spec) if runs else spec)
        samples, seconds = sum(r.get("samples", 0) for r in runs), sum(r.get("seconds", 0.0) for r in runs)
        last = runs[-1] if runs else {}
        score, note = headline(identity["benchmark"], answers, identity)
        rows.append({
            "benchmark": identity["benchmark"], "schedule": spec, "method": method, "debiased": debiased,
            "score": score, "metric": HEADLINE.get(identity["benchmark"], ("", 1))[0], "note": note,
            "answers": len(answers), "kept_tokens": kept_tokens(answers),
            "samples_per_s": samples / seconds if seconds else None,
            "flops_ratio": flops_ratio(answers, last.get("stage_layers", []), last.get("text_model", {})),
            "compiles": sum(r.get("compiles", 0) for r in runs),
            "compile_seconds": sum(r.get("compile_seconds", 0.0) for r in runs),
            "path": str(path),
        })
    return rows


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def markdown(rows: list[dict]) -> str:
    """Schedules x benchmarks: score / mean kept tokens / samples/s / FLOPs ratio per cell."""
    benches = sorted({r["benchmark"] for r in rows})
    schedules = sorted({r["schedule"] for r in rows}, key=lambda s: (s != "none", s))
    cell = {(r["schedule"], r["benchmark"]): r for r in rows}
    lines = ["score / mean kept visual tokens / samples/s / prefill FLOPs ratio", "",
             "| schedule | " + " | ".join(f"{b} ({HEADLINE.get(b, ('—',))[0]})" for b in benches) + " |",
             "|---|" + "---|" * len(benches)]
    for s in schedules:
        cells = []
        for b in benches:
            r = cell.get((s, b))
            parts = (_fmt(r["score"], ".2f"), _fmt(r["kept_tokens"], ".1f"), _fmt(r["samples_per_s"], ".2f"),
                     _fmt(r["flops_ratio"], ".3f")) if r else ()
            cells.append(" / ".join(parts))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    notes = sorted({f"- {r['benchmark']} / {r['schedule']}: {r['note']}" for r in rows if r["note"]})
    compiles = ["", "programs compiled / seconds of the batches that compiled them", "",
                "| schedule | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
    for s in schedules:
        cells = [f"{cell[(s, b)]['compiles']} / {cell[(s, b)]['compile_seconds']:.1f}" if (s, b) in cell else ""
                 for b in benches]
        compiles.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines + compiles + ([""] + notes if notes else [])) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Score against mean kept tokens per benchmark; one colour per method, raw dashed, debiased solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = sorted({r["benchmark"] for r in rows})
    fig, axes = plt.subplots(1, max(1, len(benches)), figsize=(4.5 * max(1, len(benches)), 3.6), squeeze=False)
    methods = sorted({r["method"] for r in rows if r["method"] != "none"})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, b in zip(axes[0], benches):
        for r in rows:
            if r["benchmark"] == b and r["method"] == "none" and r["score"] is not None:
                ax.axhline(r["score"], color="grey", ls=":", label="unpruned")
        for m in methods:
            for debiased in (False, True):
                pts = sorted((r["kept_tokens"], r["score"]) for r in rows if r["benchmark"] == b and r["method"] == m
                             and r["debiased"] == debiased and r["score"] is not None and r["kept_tokens"] is not None)
                if pts:
                    x, y = zip(*pts)
                    ax.plot(x, y, marker="o", ls="-" if debiased else "--", color=colours[m],
                            label=f"{'debiased ' if debiased else ''}{m}")
        ax.set_title(b)
        ax.set_xlabel("mean kept visual tokens")
        ax.set_ylabel(HEADLINE.get(b, ("score",))[0])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out_dir: str | Path) -> dict:
    """Write summary.md / summary.json / summary.png under `out_dir`; returns {name: path}."""
    out_dir = Path(out_dir)
    rows = collect(out_dir)
    paths = {"markdown": out_dir / "summary.md", "json": out_dir / "summary.json", "plot": out_dir / "summary.png"}
    paths["markdown"].write_text(markdown(rows))
    paths["json"].write_text(json.dumps(rows, indent=1))
    plot(rows, paths["plot"])
    return paths
