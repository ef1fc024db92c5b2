"""Evaluation throughput on CPU: samples/s of `jaxvlm eval` at batch 1 vs 16, unpruned vs debiased FastV, and
the share of wall time the device waits for the host (image decoding + processor in the background thread,
collation, text decoding and answer writing on the main thread).

    python -m experiments.eval_throughput [--questions 64] [--batches 1,16] [--new 8] [--json out.json]

Model: LLaVA-1.5-shaped, random weights; its LLM is experiments/bench.py's (hidden 512, 8 layers, 8 heads,
FFN 1408, vocab 32000: ~60M parameters), CLIP 336 px / patch 14 (576 image tokens) at width 64, 2 layers.
Data: a POPE folder in LLaVA's layout (llava_pope_test.jsonl, val2014/ photos from scikit-image at their
shipped sizes, coco/ labels). Protocol per batch size: one warm-up run (compiles every program), then a timed
run with --overwrite in the same process (programs cached). samples/s = answered samples / seconds inside
generate calls (compiles excluded); host share = 1 - (time inside generate) / (wall time of the run), and the
part of it spent waiting on the prefetch queue.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

SPLITS = ("adversarial", "popular", "random")


def make_model(path: Path) -> Path:
    import jaxvlm
    from experiments import assets, bench
    from jaxvlm.model import random_params
    from jaxvlm.models import llava

    tok = assets.train_tokenizer()
    hf = assets.llava_hf_config(bench.VOCAB, tok.convert_tokens_to_ids(assets.IMAGE_TOKEN), tok.pad_token_id,
                                hidden=bench.HIDDEN, layers=bench.LAYERS, heads=bench.HEADS, vision_hidden=64,
                                vision_layers=2)
    hf["text_config"]["intermediate_size"] = bench.FFN
    jaxvlm.save(random_params(llava.parse_config(hf), seed=0, std=0.02), path, hf_config=hf)
    assets.llava_processor_dir(path)
    return path


def make_pope(path: Path, n: int) -> Path:
    """A POPE folder in LLaVA-1.5's layout with `n` questions over the scikit-image photos."""
    from PIL import Image

    from experiments import assets

    (path / "val2014").mkdir(parents=True)
    (path / "coco").mkdir()
    for name in assets.PHOTOS:
        Image.fromarray(assets.photo(name)).save(path / "val2014" / f"{name}.jpg", quality=90)
    questions, labels = [], {s: [] for s in SPLITS}
    for i in range(n):
        name, split = assets.PHOTOS[i % len(assets.PHOTOS)], SPLITS[i * len(SPLITS) // n]
        text = f"Is there a {assets.PHOTOS[(i * 5) % len(assets.PHOTOS)]} in the image?"
        questions.append({"question_id": i, "image": f"{name}.jpg", "category": split,
                          "text": text + "\nAnswer the question using a single word or phrase."})
        labels[split].append({"question_id": len(labels[split]) + 1, "image": f"{name}.jpg", "text": text,
                              "label": "yes" if i % 2 else "no"})
    (path / "llava_pope_test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    for split, rows in labels.items():
        (path / "coco" / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def measure(model: Path, data: Path, out: Path, batch: int, new: int) -> list[dict]:
    from jaxvlm import prune
    from jaxvlm.evaluation import runner, store

    specs = ["none", "debiased_fastv"]
    job = runner.EvalJob(benchmark="pope", data=str(data), model=str(model), out=str(out), batch_size=batch,
                         schedules=[(s, prune.parse_schedule(s)) for s in specs], max_new_tokens=new,
                         dtype="float32", overwrite=True, progress=False, mesh_size=1)
    runner.run(job)  # warm-up: compiles
    stats = runner.run(job)
    rows = []
    for s in stats:
        last = store.read_sidecar(s["answers"])["runs"][-1]
        device = sum(st["seconds"] + st["compile_seconds"] for st in stats)
        rows.append({"batch": batch, "schedule": s["spec"], "samples_per_s": s["samples"] / s["seconds"],
                     "compiles_timed_run": s["compiles"], "wall_s": last["wall_seconds"],
                     "host_share": 1 - device / last["wall_seconds"],
                     "queue_wait_share": last["host_wait_seconds"] / last["wall_seconds"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.eval_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--new", type=int, default=8, help="max_new_tokens")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, data = make_model(tmp / "model"), make_pope(tmp / "pope", args.questions)
        rows = [r for b in batches for r in measure(model, data, tmp / f"out{b}", b, args.new)]
    print("| batch | schedule | samples/s | host share of wall | of which queue wait | compiles (timed run) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['schedule']} | {r['samples_per_s']:.2f} | {100 * r['host_share']:.1f}% | "
              f"{100 * r['queue_wait_share']:.1f}% | {r['compiles_timed_run']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
