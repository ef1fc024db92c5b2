"""`jaxvlm eval`: batched, resumable benchmark evaluation of a model under a pruning schedule.

Data: a JSONL file, one sample per line:
    {"id": "q1", "image": "images/1.jpg", "question": "What color is the bus?",
     "answers": ["red", "red", ...], "benchmark": "vqav2", "choices": ["..", ".."]}   # choices optional
`image` is relative to the JSONL file's folder. `benchmark` picks the metric and LLaVA-1.5's instruction
(experiments/scoring.py: vqav2, textvqa, vizwiz, gqa, pope, mmbench, scienceqa); `--benchmark` sets it for
every sample. Results are appended to `--out` (JSONL, one line per sample, flushed per batch): an interrupted
run loses nothing and a re-run skips the ids already there. A summary (score per benchmark, timings) is
printed and written next to it as `<out>.summary.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from experiments import scoring
from jaxvlm.processor import llava_prompt

TEMPLATES = {
    # LLaVA-1.5 vicuna_v1 (what the pruning papers evaluate with); "{q}" is question + instruction.
    "llava": llava_prompt("{q}"),
    # Qwen2-VL chat format with one image.
    "qwen": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n<|im_start|>assistant\n",
}


def read_samples(path: Path, benchmark: str | None) -> list[dict]:
    samples = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            s = json.loads(line)
            missing = {"id", "image", "question"} - set(s)
            if missing:
                raise ValueError(f"{path}:{n}: sample lacks {sorted(missing)}")
            s["benchmark"] = benchmark or s.get("benchmark")
            if s["benchmark"] not in scoring.BENCHMARKS:
                raise ValueError(f"{path}:{n}: benchmark {s['benchmark']!r} unknown; have {sorted(scoring.BENCHMARKS)}")
            s.setdefault("answers", [s["answer"]] if "answer" in s else [])
            s["image"] = str((path.parent / s["image"]).resolve())
            samples.append(s)
    ids = [s["id"] for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: sample ids are not unique")
    return samples


def done_ids(out: Path) -> set:
    if not out.exists():
        return set()
    with open(out) as f:
        return {json.loads(line)["id"] for line in f if line.strip()}


def question_text(sample: dict) -> str:
    q = sample["question"]
    if sample.get("choices"):
        q += "\n" + "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(sample["choices"]))
    return f"{q}\n{scoring.BENCHMARKS[sample['benchmark']][1]}"


def evaluate(params, processor, samples: list[dict], out: Path, *, schedule=None, template: str = "llava",
             batch_size: int = 8, max_new_tokens: int = 16, progress: bool = True) -> dict:
    """Run every sample not yet in `out`, append its result, and return the summary of the whole file."""
    import jax
    from PIL import Image
    from tqdm import tqdm

    import jaxvlm

    todo = [s for s in samples if s["id"] not in done_ids(out)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = processor.tokenizer
    with open(out, "a") as sink, tqdm(total=len(todo), disable=not progress, desc="eval", unit="sample") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            images = [np.asarray(Image.open(s["image"]).convert("RGB")) for s in batch]
            prompts = [TEMPLATES[template].format(q=question_text(s)) for s in batch]
            inputs = processor(images=images, text=prompts)
            t0 = time.perf_counter()
            result = jaxvlm.generate(params, **inputs, prune=schedule, max_new_tokens=max_new_tokens,
                                     eos_token_id=tokenizer.eos_token_id)
            tokens = np.asarray(jax.block_until_ready(result.tokens))
            seconds = time.perf_counter() - t0
            texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
            for b, (s, text) in enumerate(zip(batch, texts)):
                metric = scoring.BENCHMARKS[s["benchmark"]][0]
                record = {
                    "id": s["id"], "benchmark": s["benchmark"], "prediction": text.strip(),
                    "score": scoring.score(metric, text, s["answers"], s.get("choices")) if s["answers"] else None,
                    "kept": [int((np.asarray(k[b]) >= 0).sum()) for k in result.kept],
                    "seconds": seconds / len(batch),
                }
                sink.write(json.dumps(record) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(batch))
    return summarize(out)


def summarize(out: Path) -> dict:
    per = {}
    with open(out) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                per.setdefault(r["benchmark"], []).append(r)
    summary = {}
    for bench, rows in sorted(per.items()):
        scored = [r["score"] for r in rows if r["score"] is not None]
        summary[bench] = {
            "samples": len(rows),
            "score": 100.0 * float(np.mean(scored)) if scored else None,
            "median_seconds_per_sample": float(np.median([r["seconds"] for r in rows])),
            "mean_kept": [float(np.mean(k)) for k in zip(*[r["kept"] for r in rows])] if rows[0]["kept"] else [],
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxvlm eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint dir or jaxvlm dir")
    parser.add_argument("--processor", help="processor dir (default: --model)")
    parser.add_argument("--data", required=True, help="benchmark JSONL (see module docstring)")
    parser.add_argument("--out", required=True, help="results JSONL (appended; re-runs resume)")
    parser.add_argument("--benchmark", help="override every sample's benchmark name")
    parser.add_argument("--prune", default="none", help="schedule, e.g. fastv, debiased_fastv:keep=64")
    parser.add_argument("--template", choices=sorted(TEMPLATES), default="llava")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)

    import jaxvlm
    from jaxvlm import prune

    samples = read_samples(Path(args.data), args.benchmark)
    schedule = prune.parse_schedule(args.prune)
    params = jaxvlm.load(args.model, dtype=args.dtype)
    processor = jaxvlm.Processor.from_pretrained(args.processor or args.model)
    out = Path(args.out)
    summary = evaluate(params, processor, samples, out, schedule=schedule, template=args.template,
                       batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    Path(f"{out}.summary.json").write_text(json.dumps(summary, indent=2))
    for bench, s in summary.items():
        score = "n/a" if s["score"] is None else f"{s['score']:.2f}"
        print(f"{bench:<12} {s['samples']:>6} samples  score {score}  "
              f"{s['median_seconds_per_sample'] * 1e3:.0f} ms/sample  kept {s['mean_kept']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
