"""`jaxvlm eval` and `jaxvlm score`: the evaluation harness's command line (API.md "Evaluation").

    jaxvlm eval BENCH --data DIR --model CKPT --prune SPEC [SPEC ...] --out DIR [--batch-size N] [--limit N]
                [--dtype float32|bfloat16] [--mesh data=D,model=M] [--fsdp] [--compile-cache DIR]
    jaxvlm score BENCH --data DIR --answers FILE [--json OUT]

`jaxvlm eval` answers every question of BENCH under each schedule (the model loaded once) into
`OUT/BENCH/<schedule>/answers.jsonl` (LLaVA's answers format; resumable, tied to its run in
`answers.jsonl.run.json`), then writes OUT/summary.{md,json,png} over everything under OUT.
`jaxvlm score` scores any answers file in LLaVA's format as the benchmark's official script does and prints
{"benchmark", "metrics", "per_question", "artifacts"} as one JSON object.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path

from jaxvlm.engine.sharding_spec import parse_mesh_spec
from jaxvlm.errors import UserError


def _bench_names() -> list[str]:
    from jaxvlm.evaluation import BENCHMARKS

    return list(BENCHMARKS)


def _existing_dir(flag: str, path: str | None) -> None:
    if path is not None and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: no such directory")


def _with_release_trend(spec: str, benchmark: str) -> str:
    """A debiased preset whose trend is per benchmark gets this benchmark's (unless the spec names one)."""
    from jaxvlm import prune

    name, sep, rest = spec.partition(":")
    builder = getattr(prune, name.strip(), None) if name.strip().startswith("debiased_") else None
    if builder is None or "benchmark" not in inspect.signature(builder).parameters:
        return spec
    if "benchmark=" in rest or "trend=" in rest or benchmark not in _image_benchmarks():
        return spec
    return f"{name}:{rest},benchmark={benchmark}" if rest.strip() else f"{name}:benchmark={benchmark}"


def _image_benchmarks() -> set[str]:
    from jaxvlm.evaluation import BENCHMARKS

    return {b for b, mod in BENCHMARKS.items() if not mod.endswith(".video")}


def parse_schedules(specs: list[str], benchmark: str) -> list[tuple[str, object]]:
    """[(spec, schedule)] for every --prune spec, all validated before anything is loaded."""
    from jaxvlm import prune
    from jaxvlm.evaluation.runner import schedule_slug

    out, slugs = [], {}
    for spec in specs:
        full = _with_release_trend(spec, benchmark)
        try:
            schedule = prune.parse_schedule(full)
        except UserError:
            raise
        except (ValueError, TypeError) as e:
            raise UserError(f"--prune {spec!r}: {e}") from None
        slug = schedule_slug(spec)
        if slug in slugs:
            raise UserError(f"--prune {spec!r} and {slugs[slug]!r} write the same folder {slug!r}; give each once")
        slugs[slug] = spec
        out.append((spec, schedule))
    return out


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jaxvlm eval", description="Answer every question of BENCH under each "
                                "--prune schedule (model loaded once) into OUT/BENCH/<schedule>/answers.jsonl "
                                "(LLaVA's answers format, resumable), then write OUT/summary.{md,json,png}.")
    p.add_argument("benchmark", metavar="BENCH", choices=_bench_names(), help=", ".join(_bench_names()))
    p.add_argument("--data", required=True, help="the benchmark's folder (LLaVA eval layout, Video-LLaVA "
                   "GPT_Zero_Shot_QA/<set>, or a local lmms-eval parquet dataset)")
    p.add_argument("--model", required=True, help="Hugging Face or jaxvlm checkpoint directory")
    p.add_argument("--prune", nargs="+", default=["none"], metavar="SPEC",
                   help="one or more schedules: none | METHOD[:k=v,...] | debiased_METHOD[:...]")
    p.add_argument("--out", required=True, help="results folder (OUT/BENCH/<schedule>/answers.jsonl)")
    p.add_argument("--processor", help="processor directory (default: --model)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per batch (default: 8 per device)")
    p.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    p.add_argument("--skip-bad", action="store_true", help="record undecodable media as skipped answers")
    p.add_argument("--overwrite", action="store_true", help="start the answers files over")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: LLaVA-1.5's for the benchmark")
    p.add_argument("--image-folder", default=None, help="images folder (default: the layout's standard one)")
    p.add_argument("--variant", choices=("llava", "lmms"), default="llava", help="prompts as LLaVA-1.5 or lmms-eval")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="weights dtype (default: bfloat16 on GPU / TPU, float32 on CPU)")
    p.add_argument("--mesh", default=None,
                   help="data=D[,model=M]: D-way data parallel (default: all devices / M), M-way tensor parallel "
                   "(the weights loaded straight into their shards)")
    p.add_argument("--fsdp", action="store_true",
                   help="also shard the weights over the data axis (FSDP; gathered per layer when used)")
    p.add_argument("--compile-cache", metavar="DIR", default=None,
                   help="persistent compilation cache directory, reused by later runs (default: "
                   "$JAXVLM_COMPILE_CACHE, else none)")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: jax.distributed.initialize() (cluster auto-detected) before anything else")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.distributed:
        import jax

        jax.distributed.initialize()

    from jaxvlm import compile_cache
    from jaxvlm.evaluation import runner, summary

    # before anything compiles: jax decides at a process's first compile whether the persistent cache is used
    compile_cache.enable_from(args.compile_cache)

    _existing_dir("--data", args.data)
    _existing_dir("--model", args.model)
    _existing_dir("--processor", args.processor)
    _existing_dir("--image-folder", args.image_folder)
    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    data_size, model_size = parse_mesh_spec(args.mesh)
    job = runner.EvalJob(
        benchmark=args.benchmark, data=args.data, model=args.model,
        schedules=parse_schedules(args.prune, args.benchmark), out=args.out, processor=args.processor,
        batch_size=args.batch_size, limit=args.limit, skip_bad=args.skip_bad, overwrite=args.overwrite,
        max_new_tokens=args.max_new_tokens, image_folder=args.image_folder, variant=args.variant,
        dtype=args.dtype, mesh_size=data_size, model_size=model_size, fsdp=args.fsdp,
        progress=not args.no_progress)
    stats = runner.run(job)
    for s in stats:
        rate = f"{s['samples'] / s['seconds']:.2f} samples/s" if s["seconds"] else "no new answers"
        print(f"{args.benchmark} {s['slug']}: {s['lines']}/{s['questions']} answered ({rate}; {s['compiles']} "
              f"program(s) compiled, {s['compile_seconds']:.1f} s) -> {s['answers']}")
    import jax

    if jax.process_index() == 0:
        paths = summary.write(args.out)
        print(Path(paths["markdown"]).read_text(), end="")
        print(f"summary: {', '.join(str(v) for v in paths.values())}")
    return 0


def score_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jaxvlm score", description="Score an answers file in LLaVA's format as the "
                                "benchmark's official script does; print {benchmark, metrics, per_question, "
                                "artifacts} as one JSON object.")
    p.add_argument("benchmark", metavar="BENCH", choices=_bench_names(), help=", ".join(_bench_names()))
    p.add_argument("--data", required=True, help="the benchmark's folder (as for jaxvlm eval)")
    p.add_argument("--answers", required=True, help="answers file in LLaVA's format (ours or LLaVA's)")
    p.add_argument("--json", default=None, help="also write the JSON here")
    p.add_argument("--artifacts", default=None,
                   help="folder for submission / judge files (default: the answers file's folder)")
    p.add_argument("--judge", default=None, help="a judge's result file to aggregate (MM-Vet, video sets)")
    args = p.parse_args(argv)

    from jaxvlm import evaluation
    from jaxvlm.evaluation import base

    _existing_dir("--data", args.data)
    if args.judge is not None and not os.path.isfile(args.judge):
        raise UserError(f"--judge {args.judge}: no such file")
    answers = base.read_answers(args.answers)
    out_dir = Path(args.artifacts or Path(args.answers).resolve().parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = evaluation.benchmark(args.benchmark).score(args.data, answers, benchmark=args.benchmark,
                                                        out_dir=out_dir, judge=args.judge)
    text = json.dumps(result.to_json(args.benchmark), ensure_ascii=False)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


main = eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
