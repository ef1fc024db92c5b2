"""`jaxvlm eval`'s engine: one benchmark, several pruning schedules, the model loaded once.

    stats = run(EvalJob(benchmark="pope", data=..., model=..., schedules=[("none", None), ("fastv", sched)],
                        out="runs/x"))

Order of work: read and validate every question and media path (bench.read) -> open every answers store
(identity checks, locks, resume points) -> load the processor, estimate prompt lengths, plan length-sorted
batches -> load the model -> for each batch (encoded in a background thread, feed.Prefetcher) run every
schedule that still needs its rows. Each schedule writes `<out>/<bench>/<slug>/answers.jsonl` (store.py).

Devices: data-parallel over this process's devices (`mesh_size` of them, default all) through
jaxvlm.engine.sharding.data_mesh; with `model_size` > 1 a (data x model) mesh whose model axis splits the
weights (sharding.model_mesh, tensor parallelism for models one device cannot hold; `fsdp` also splits them
over the data axis). `jaxvlm.load(..., mesh=)` reads each weight straight into its shards. `dtype` None is
jaxvlm.io.default_dtype() (bfloat16 on accelerators, float32 on CPU), resolved before the run identity.
Compiles are counted per schedule (TRACE_COUNTS of the generate program; Qwen's patch-count buckets keep them
to about one per prompt bucket) with their wall seconds, excluded from samples/s. Multi-host (jax.distributed initialised before the run): process p answers
the contiguous chunk p of ceil(n / P) questions (LLaVA's --chunk-idx split) on its own devices into
`answers.<p>.jsonl`; after a barrier, process 0 merges complete shards in order into `answers.jsonl`.
Decoding is greedy; an answer is `batch_decode(tokens up to the first EOS, skip_special_tokens=True).strip()`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from jaxvlm.engine.sharding_spec import local_mesh
from jaxvlm.errors import UserError
from jaxvlm.evaluation import base, feed, prompts, store


@dataclasses.dataclass
class EvalJob:
    benchmark: str
    data: str
    model: str
    schedules: list  # [(spec string, schedule tuple or None)]
    out: str
    processor: str | None = None
    batch_size: int | None = None  # global rows per batch; default 8 per device
    limit: int | None = None
    skip_bad: bool = False
    overwrite: bool = False
    max_new_tokens: int | None = None  # default: the benchmark's MAX_NEW_TOKENS
    image_folder: str | None = None
    variant: str = "llava"
    dtype: str | None = None  # None: bfloat16 on accelerators, float32 on CPU
    mesh_size: int | None = None  # devices on the data axis (default: all / model)
    model_size: int = 1  # devices on the model axis (tensor parallelism)
    fsdp: bool = False  # weights also sharded over the data axis
    progress: bool = True


def schedule_slug(spec: str) -> str:
    """A directory name for a --prune spec: `debiased_fastv:keep=64` -> `debiased_fastv-keep=64`."""
    spec = spec.strip() or "none"
    name, _, rest = spec.partition(":")
    slug = name + ("-" + rest if rest else "")
    return re.sub(r"[^A-Za-z0-9=.+_-]+", "_", slug.replace(",", "-").replace("/", "+")).strip("_") or "none"


def status(message: str) -> None:
    print(f"[jaxvlm eval] {message}", file=sys.stderr, flush=True)


def eos_ids(model_dir: str, tokenizer) -> list[int]:
    """EOS ids from the checkpoint's generation_config.json (Qwen: <|im_end|> and <|endoftext|>), else the
    tokenizer's."""
    f = Path(model_dir) / "generation_config.json"
    if f.is_file():
        eos = json.loads(f.read_text()).get("eos_token_id")
        if eos is not None:
            return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]


def decode_texts(tokenizer, tokens: np.ndarray, eos: list[int]) -> list[str]:
    """Each row cut at its first EOS, decoded with skip_special_tokens, stripped."""
    rows = []
    for row in np.asarray(tokens):
        hits = np.flatnonzero(np.isin(row, eos)) if eos else []
        rows.append(row[: hits[0]].tolist() if len(hits) else row.tolist())
    return [t.strip() for t in tokenizer.batch_decode(rows, skip_special_tokens=True)]


def answer_id(digest: str, line: int) -> str:
    """Deterministic per (run identity, line), so a resumed run writes exactly the uninterrupted file."""
    return hashlib.sha256(f"{digest}:{line}".encode()).hexdigest()[:22]


def shard_range(n: int, process: int, processes: int) -> tuple[int, int]:
    """Lines [lo, hi) of contiguous chunk `process` of ceil(n / processes) (LLaVA's get_chunk)."""
    size = -(-n // processes)
    return min(n, process * size), min(n, (process + 1) * size)


@dataclasses.dataclass
class _Task:
    """One schedule's run state."""

    spec: str
    schedule: object
    store: store.AnswerStore
    digest: str
    start: int
    pending: dict = dataclasses.field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0
    compiles: int = 0

    def flush(self) -> None:
        ready = []
        while self.store.done + len(ready) in self.pending:
            ready.append(self.pending.pop(self.store.done + len(ready)))
        if ready:
            self.store.append(ready)


def _records(job: EvalJob, task: _Task, samples, encoded, texts, kept) -> None:
    model_id = Path(job.model).name
    for row, e in enumerate(encoded):
        meta = {"prompt_tokens": e.length, "visual_tokens": e.visual,
                "kept": [int(k[row]) for k in kept] if e.visual else []}
        task.pending[e.line] = base.answer_record(samples[e.line], texts[row], model_id, answer_id(task.digest, e.line),
                                                  meta)


def _skipped(task: _Task, samples, e: feed.Encoded, model_id: str) -> None:
    task.pending[e.line] = base.answer_record(samples[e.line], "", model_id, answer_id(task.digest, e.line),
                                              {"skipped": e.skipped})


def run(job: EvalJob) -> list[dict]:
    """Run `job`; returns one stats dict per schedule (slug, answers path, samples, seconds, compiles, ...)."""
    import jax

    from jaxvlm import evaluation, io

    job = dataclasses.replace(job, dtype=job.dtype or io.default_dtype())
    bench = evaluation.benchmark(job.benchmark)
    max_new = int(job.max_new_tokens or bench.MAX_NEW_TOKENS)
    if max_new < 1:
        raise UserError(f"--max-new-tokens {max_new}: must be at least 1")
    samples_all = bench.read(job.data, benchmark=job.benchmark, image_folder=job.image_folder, variant=job.variant)
    if not samples_all:
        raise UserError(f"{job.data}: {job.benchmark} has no questions")
    process, processes = jax.process_index(), jax.process_count()
    if processes > 1:  # every host here before the first collective (gloo's set-up has a deadline)
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxvlm-eval-start")
    lo, hi = shard_range(len(samples_all), process, processes)
    samples = samples_all[lo:hi]
    stop = len(samples) if job.limit is None else max(0, min(len(samples), job.limit - lo))

    from jaxvlm.processor import Processor

    proc_dir = job.processor or job.model
    try:
        processor = Processor.from_pretrained(proc_dir)
    except UserError:
        raise
    except (ValueError, OSError) as e:
        raise UserError(f"--processor {proc_dir}: cannot load a processor there ({e})") from None
    prompts.check_family(processor.family, samples, job.benchmark)

    shard = (process, processes) if processes > 1 else None
    name = f"answers.{process}.jsonl" if shard else "answers.jsonl"
    tasks = []
    for spec, schedule in job.schedules:
        identity = store.run_identity(model=job.model, dtype=job.dtype, schedule=schedule, variant=job.variant,
                                      max_new_tokens=max_new, benchmark=job.benchmark, data=job.data,
                                      image_folder=job.image_folder, shard=shard)
        path = Path(job.out) / job.benchmark / schedule_slug(spec) / name
        tasks.append(_Task(spec, schedule, store.AnswerStore(path, identity, samples, job.overwrite),
                           store.identity_digest(identity), 0))

    with store.open_stores([t.store for t in tasks]):
        for t in tasks:
            t.start = t.store.done
            if t.store.repaired:
                status(f"{t.store.path}: cut a partial last line ({t.store.repaired} bytes); answering it again")
        first = min(t.start for t in tasks)
        if not _any_host(first < stop, shard):
            status(f"every schedule already answered {stop} questions" + (f" of shard {process}" if shard else ""))
        else:  # a host without work still loads the model: loading is collective (orbax) on several hosts
            _generate(job, bench, processor, proc_dir, samples, tasks, min(first, stop), stop, max_new)
    stats = [{"spec": t.spec, "slug": schedule_slug(t.spec), "answers": str(t.store.path), "samples": t.samples,
              "seconds": t.seconds, "compile_seconds": t.compile_seconds, "compiles": t.compiles,
              "lines": t.store.done, "questions": len(samples)} for t in tasks]
    if shard:
        _merge_shards(job, tasks, len(samples_all), process, processes)
    return stats


def _any_host(flag: bool, shard) -> bool:
    """`flag` of this process, or-ed over all processes when sharded over hosts."""
    if not shard:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.array([flag]))).any())


def _generate(job, bench, processor, proc_dir, samples, tasks, first, stop, max_new) -> None:
    import jax
    from tqdm import tqdm

    import jaxvlm
    from jaxvlm import video_inputs
    from jaxvlm.engine import api

    video_cfg = None
    if processor.family.startswith("qwen") and any(s.video is not None for s in samples[first:stop]):
        video_cfg = video_inputs.VideoConfig.from_dir(proc_dir, processor.hf.image_processor)
    encoder = feed.Encoder(processor, bench, video_cfg, skip_bad=job.skip_bad)
    lines = list(range(first, stop))
    lengths = encoder.estimate_lengths([samples[i] for i in lines])
    mesh, n_dev = local_mesh(job.mesh_size, job.model_size)
    batch_size = job.batch_size or 8 * n_dev
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    batches = feed.plan_batches(lines, lengths, batch_size)

    status(f"loading {job.model} ({job.dtype})")
    t0 = time.perf_counter()
    params = jaxvlm.load(job.model, dtype=job.dtype, mesh=mesh, fsdp=job.fsdp)
    status(f"loaded in {time.perf_counter() - t0:.1f} s; {len(lines)} questions x {len(tasks)} schedule(s), "
           f"batch {batch_size} on {n_dev * job.model_size} device(s) (data {n_dev} x model {job.model_size}"
           f"{', fsdp' if job.fsdp and mesh is not None else ''})")
    tok = processor.tokenizer
    eos = eos_ids(job.model, tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    model_id = Path(job.model).name
    seen = set()
    total = sum(stop - t.start for t in tasks if t.start < stop)
    prefetch = feed.Prefetcher(encoder, samples, batches)
    wall = time.perf_counter()
    with tqdm(total=total, desc=f"eval {job.benchmark}", unit="sample", disable=not job.progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for batch_lines, encoded in prefetch:
            for t in tasks:
                rows = [e for e in encoded if t.start <= e.line < stop]
                for e in rows:
                    if e.skipped:
                        _skipped(t, samples, e, model_id)
                good = [e for e in rows if not e.skipped]
                if good:
                    inputs = feed.collate(good, batch_size, pad_id)
                    key = (t.spec, api.bucket_length(max(e.length for e in good)))
                    if key not in seen:
                        seen.add(key)
                        bar.write(f"[jaxvlm eval] {schedule_slug(t.spec)}: prompts up to {key[1]} tokens "
                                  "(compiles its program on first use)", file=sys.stderr)
                    traced = api.TRACE_COUNTS["generate"]
                    t0 = time.perf_counter()
                    # a batch without visual tokens (text-only questions) has nothing to prune
                    schedule = t.schedule if any(e.visual for e in good) else None
                    out = jaxvlm.generate(params, **inputs, prune=schedule, max_new_tokens=max_new,
                                          eos_token_id=eos or None, pad_token_id=pad_id, mesh=mesh)
                    tokens = np.asarray(jax.block_until_ready(out.tokens))[: len(good)]
                    kept = [(np.asarray(k)[: len(good)] >= 0).sum(axis=1) for k in out.kept]
                    dt = time.perf_counter() - t0
                    compiled = api.TRACE_COUNTS["generate"] - traced
                    t.compiles += compiled
                    if compiled:
                        t.compile_seconds += dt
                    else:
                        t.seconds += dt
                        t.samples += len(good)
                    _records(job, t, samples, good, decode_texts(tok, tokens, eos), kept)
                t.flush()
                bar.update(len(rows))
            wait = prefetch.wait_seconds / max(time.perf_counter() - wall, 1e-9)
            bar.set_postfix(compiles=sum(t.compiles for t in tasks), host_wait=f"{100 * wait:.0f}%")
    wall = time.perf_counter() - wall
    text = params.config.text
    shape = {"hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
             "num_layers": text.num_layers}
    for t in tasks:
        layers = [int(getattr(st, "layer", 0)) for st in t.schedule or ()]
        t.store.log_run(spec=t.spec, text_model=shape, stage_layers=layers,
                        samples=t.samples, seconds=t.seconds, compile_seconds=t.compile_seconds,
                        compiles=t.compiles, batch_size=batch_size, devices=n_dev, wall_seconds=wall,
                        host_wait_seconds=prefetch.wait_seconds, lines=t.store.done)
    for t in tasks:
        status(f"{schedule_slug(t.spec)}: {t.compiles} program(s) compiled ({t.compile_seconds:.1f} s for the "
               f"batches that compiled); {t.samples} more answers in {t.seconds:.1f} s")
    status(f"done in {wall:.1f} s; {sum(t.compiles for t in tasks)} program(s) compiled; the device waited "
           f"{prefetch.wait_seconds:.1f} s for the host")


def _merge_shards(job: EvalJob, tasks, n: int, process: int, processes: int) -> None:
    """After a barrier, process 0 concatenates complete shards 0..P-1 into answers.jsonl (line order)."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"jaxvlm-eval-{job.benchmark}")
    if process != 0:
        return
    for t in tasks:
        folder = t.store.path.parent
        shards = [folder / f"answers.{p}.jsonl" for p in range(processes)]
        lines = []
        for p, f in enumerate(shards):
            lo, hi = shard_range(n, p, processes)
            got = f.read_text().splitlines(keepends=True) if f.is_file() else []
            if len(got) != hi - lo:
                status(f"{folder}: shard {p} has {len(got)} of {hi - lo} answers; not merged yet")
                break
            lines += got
        else:
            merged = folder / "answers.jsonl"
            identity = {**t.store.identity, "shard": None}
            tmp = merged.with_name(merged.name + ".tmp")
            tmp.write_text("".join(lines))
            os.replace(tmp, merged)
            runs = [r for f in shards for r in (store.read_sidecar(f) or {}).get("runs", [])]
            store.write_json_atomic(store.sidecar_path(merged),
                                    {"identity": identity, "runs": runs, "merged_from": [s.name for s in shards]})
