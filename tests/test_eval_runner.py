"""`jaxvlm eval` end to end on tiny random models (jaxvlm.evaluation.runner / feed / prompts / summary).

A fake benchmark (tests/evalfake.py, registered as "fakeqa") stands in where no real layout is needed: it has
repeated question ids, a text-only line and real photos. Tiny LLaVA: 112 px (64 image tokens), the offline
tokenizer of experiments/assets.py, random weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import evalfake
import jaxvlm
from experiments import assets
from jaxvlm import evaluation
from jaxvlm.errors import UserError
from jaxvlm.evaluation import base, cli, feed, prompts, runner
from jaxvlm.evaluation.base import Sample

TESTS = Path(__file__).parent


@pytest.fixture(scope="module", autouse=True)
def fake_benchmark():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(evaluation.BENCHMARKS, "fakeqa", "evalfake")
        yield


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return evalfake.tiny_llava(tmp_path_factory.mktemp("llava") / "model")


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    return evalfake.make(tmp_path_factory.mktemp("fakeqa"), text_only=None)


def eval_args(model, data, out, *prune, extra=()):
    return ["fakeqa", "--data", str(data), "--model", str(model), "--out", str(out), "--prune", *(prune or ["none"]),
            "--batch-size", "2", "--max-new-tokens", "3", "--dtype", "float32", "--no-progress", *extra]


def answers_of(out, slug, bench="fakeqa"):
    return base.read_answers(Path(out) / bench / slug / "answers.jsonl")


# ---------------------------------------------------------------------------------------------- pure parts


def test_llava_prompt_is_vicuna_v1_with_image_first(llava_dir):
    proc = jaxvlm.Processor.from_pretrained(llava_dir)
    s = Sample(line=0, question_id=1, prompt="What is it?\nAnswer the question using a single word or phrase.",
               image="x.png")
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions.")
    assert prompts.build_prompt(proc, s) == f"{system} USER: <image>\n{s.prompt} ASSISTANT:"
    text_only = Sample(line=0, question_id=1, prompt="Which is a mammal?")
    assert prompts.build_prompt(proc, text_only) == f"{system} USER: Which is a mammal? ASSISTANT:"
    with pytest.raises(UserError, match="LLaVA-1.5 takes no video"):
        prompts.check_family("llava", [Sample(line=0, question_id=1, prompt="q", video="v.mp4")], "msvd_qa")


def test_plan_batches_sorts_within_windows_and_keeps_every_line():
    lines = list(range(10, 30))
    lengths = [(i * 7) % 11 for i in range(20)]
    batches = feed.plan_batches(lines, lengths, batch_size=3, window_batches=2)
    assert sorted(x for b in batches for x in b) == lines
    assert all(len(b) == 3 for b in batches[:-1])
    for w in range(0, 20, 6):  # each window of 6 lines is sorted longest first and holds exactly its lines
        got = [x for b in batches[w // 3:(w + 6) // 3] for x in b]
        assert sorted(got) == lines[w:w + 6]
        assert [lengths[x - 10] for x in got] == sorted((lengths[x - 10] for x in got), reverse=True)


def test_schedule_slug_and_shard_ranges():
    assert runner.schedule_slug("none") == "none"
    assert runner.schedule_slug("debiased_fastv:keep=64,layer=2") == "debiased_fastv-keep=64-layer=2"
    assert runner.schedule_slug("pdrop:layers=2/10/20") == "pdrop-layers=2+10+20"
    # LLaVA's contiguous chunks: ceil(n / P) lines each, concatenated in process order = question order
    assert [runner.shard_range(10, p, 4) for p in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_decode_texts_cuts_at_eos(llava_dir):
    tok = jaxvlm.Processor.from_pretrained(llava_dir).tokenizer
    ids = tok("Yes No", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    rows = np.array([ids + [eos] + ids, ids + [tok.pad_token_id] * (len(ids) + 1)])
    assert runner.decode_texts(tok, rows, [eos]) == ["Yes No", "Yes No"]


# ------------------------------------------------------------------------------------------- end to end


SPECS = ["none", "debiased_fastv:layer=1,keep=32"]
SLUGS = {"none": [], "debiased_fastv-layer=1-keep=32": [32]}


@pytest.fixture(scope="module")
def full_run(llava_dir, fake_data, tmp_path_factory):
    """One uninterrupted eval of every SPEC (stdout captured)."""
    out = tmp_path_factory.mktemp("full")
    jax.clear_caches()  # programs an earlier test compiled in this process would hide this run's compiles
    assert cli.eval_main(eval_args(llava_dir, fake_data, out, *SPECS)) == 0
    return out


def test_eval_writes_answers_in_question_order_and_a_summary(full_run, fake_data):
    samples = evalfake.read(fake_data)
    for slug, kept in SLUGS.items():
        got = answers_of(full_run, slug)
        assert [a["prompt"] for a in got] == [s.prompt for s in samples]  # question order, keyed by line
        assert [a["question_id"] for a in got] == [s.question_id for s in samples]
        for a, s in zip(got, samples):
            assert a["metadata"]["kept"] == kept and a["metadata"]["visual_tokens"] == evalfake.LLAVA_TOKENS
        sidecar = json.loads((full_run / "fakeqa" / slug / "answers.jsonl.run.json").read_text())
        assert sidecar["identity"]["max_new_tokens"] == 3 and sidecar["runs"][-1]["compiles"] >= 1
    for f in ("summary.md", "summary.json", "summary.png"):
        assert (full_run / f).is_file()
    by = {r["schedule"]: r for r in json.loads((full_run / "summary.json").read_text())}
    assert set(by) == set(SLUGS)
    assert by["none"]["flops_ratio"] == pytest.approx(1.0)
    assert 0.6 < by["debiased_fastv-layer=1-keep=32"]["flops_ratio"] < 0.9  # 64 -> 32 visual of ~100 tokens
    assert by["debiased_fastv-layer=1-keep=32"]["kept_tokens"] == pytest.approx(32.0)
    assert by["none"]["kept_tokens"] == pytest.approx(evalfake.LLAVA_TOKENS)
    assert "| debiased_fastv-layer=1-keep=32 |" in (full_run / "summary.md").read_text()


def test_interrupted_run_resumes_to_the_uninterrupted_answers(full_run, llava_dir, fake_data, tmp_path,
                                                               monkeypatch):
    part = tmp_path / "part"
    real = jaxvlm.engine.generate
    calls = []

    def interrupted(*a, **k):  # Ctrl-C during the third device call
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(jaxvlm.engine, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.eval_main(eval_args(llava_dir, fake_data, part, *SPECS))
    monkeypatch.setattr(jaxvlm.engine, "generate", real)
    torn = part / "fakeqa" / "none" / "answers.jsonl"
    n_before = len(torn.read_text().splitlines())
    assert 0 < n_before < len(evalfake.read(fake_data))
    with open(torn, "a") as f:
        f.write('{"question_id": "img9", "pro')  # killed mid-write
    assert cli.eval_main(eval_args(llava_dir, fake_data, part, *SPECS)) == 0
    for slug in SLUGS:
        assert (part / "fakeqa" / slug / "answers.jsonl").read_bytes() == \
               (full_run / "fakeqa" / slug / "answers.jsonl").read_bytes()


def test_another_run_never_reuses_answers(full_run, llava_dir, fake_data):
    before = (full_run / "fakeqa" / "none" / "answers.jsonl").read_bytes()
    with pytest.raises(UserError, match="written by another run.*max_new_tokens"):
        cli.eval_main(eval_args(llava_dir, fake_data, full_run, "none", extra=["--max-new-tokens", "5"]))
    assert (full_run / "fakeqa" / "none" / "answers.jsonl").read_bytes() == before
    assert cli.eval_main(eval_args(llava_dir, fake_data, full_run, "debiased_fastv:layer=1,keep=48",
                                   extra=["--limit", "1"])) == 0
    got = answers_of(full_run, "debiased_fastv-layer=1-keep=48")
    assert len(got) == 1 and all(a["metadata"]["kept"] == [48] for a in got)


def test_text_only_questions_have_no_image_token_and_nothing_to_prune(llava_dir, tmp_path):
    data = evalfake.make(tmp_path / "data", n=3, text_only=1)
    assert cli.eval_main(eval_args(llava_dir, data, tmp_path / "out", "debiased_fastv:layer=1,keep=32")) == 0
    got = answers_of(tmp_path / "out", "debiased_fastv-layer=1-keep=32")
    assert [a["metadata"]["visual_tokens"] for a in got] == [evalfake.LLAVA_TOKENS, 0, evalfake.LLAVA_TOKENS]
    assert [a["metadata"]["kept"] for a in got] == [[32], [], [32]]


def test_skip_bad_records_undecodable_images(llava_dir, fake_data, tmp_path):
    data = tmp_path / "data"
    evalfake.make(data, n=3, text_only=None)
    broken = data / "images" / f"{assets.PHOTOS[1]}.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"questions.jsonl:2: cannot decode .*chelsea.png"):
        cli.eval_main(eval_args(llava_dir, data, tmp_path / "a"))
    assert cli.eval_main(eval_args(llava_dir, data, tmp_path / "b", extra=["--skip-bad"])) == 0
    got = answers_of(tmp_path / "b", "none")
    assert len(got) == 3 and "cannot decode" in got[1]["metadata"]["skipped"] and got[1]["text"] == ""
    assert "skipped" not in got[0]["metadata"]


def test_errors_name_the_flag_before_loading(llava_dir, fake_data, tmp_path):
    with pytest.raises(UserError, match="--prune 'nosuch'"):
        cli.eval_main(eval_args(llava_dir, fake_data, tmp_path, "nosuch"))
    with pytest.raises(UserError, match="--mesh 'pipeline=2'"):
        cli.eval_main(eval_args(llava_dir, fake_data, tmp_path, extra=["--mesh", "pipeline=2"]))
    with pytest.raises(UserError, match="--mesh 'data=x'"):
        cli.eval_main(eval_args(llava_dir, fake_data, tmp_path, extra=["--mesh", "data=x"]))
    with pytest.raises(UserError, match="--mesh data=64,model=1: this process has"):
        cli.eval_main(eval_args(llava_dir, fake_data, tmp_path, extra=["--mesh", "data=64"]))
    with pytest.raises(UserError, match="--data .*no such directory"):
        cli.eval_main(eval_args(llava_dir, tmp_path / "nope", tmp_path))


EIGHT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8, jax.devices()
    import jaxvlm
    from jaxvlm import evaluation
    from jaxvlm.evaluation import cli
    evaluation.BENCHMARKS["fakeqa"] = "evalfake"
    load, loads = jaxvlm.load, []
    def recorded(path, **kw):  # the mesh and fsdp eval loads the weights into
        loads.append([None if kw["mesh"] is None else dict(kw["mesh"].shape), kw["fsdp"]])
        return load(path, **kw)
    jaxvlm.load = recorded
    for mesh in ("data=8", "data=2,model=4", "data=2,model=4+fsdp", "data=1"):
        cli.eval_main(["fakeqa", "--data", {data!r}, "--model", {model!r}, "--out", os.path.join({out!r}, mesh),
                       "--prune", "none", "debiased_fastv:layer=1,keep=32", "--batch-size", "8",
                       "--max-new-tokens", "3", "--dtype", "float32", "--no-progress",
                       "--mesh", mesh.split("+")[0]] + (["--fsdp"] if "fsdp" in mesh else []))
    print("LOADS", json.dumps(loads))
    print("EIGHT_OK")
""")


@pytest.mark.slow  # a subprocess on 8 forced host devices: ~2-5 min on 2 busy cores
def test_eight_devices_answer_as_one(llava_dir, tmp_path):
    data = evalfake.make(tmp_path / "data", n=11)
    code = EIGHT.format(tests=str(TESTS), data=str(data), model=str(llava_dir), out=str(tmp_path))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                          cwd=TESTS.parent)
    assert "EIGHT_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
    loads = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("LOADS"))[6:])
    assert loads == [[{"data": 8}, False], [{"data": 2, "model": 4}, False], [{"data": 2, "model": 4}, True],
                     [None, False]]  # the weights loaded straight into their shards
    for slug in ("none", "debiased_fastv-layer=1-keep=32"):
        one = [a["text"] for a in answers_of(tmp_path / "data=1", slug)]
        for mesh in ("data=8", "data=2,model=4", "data=2,model=4+fsdp"):
            got = [a["text"] for a in answers_of(tmp_path / mesh, slug)]
            assert len(got) == 11 and got == one, mesh


HOSTS = textwrap.dedent("""
    import functools, os, sys
    pid, n, port, data, model, out = sys.argv[1:]
    pid, n = int(pid), int(n)
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    if n > 1:  # gloo on loopback, as tests/test_engine_multihost.py
        from jax._src import xla_bridge
        xla_bridge._jax.make_gloo_tcp_collectives = functools.partial(
            xla_bridge._jax.make_gloo_tcp_collectives, hostname="127.0.0.1")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid,
                                   coordinator_bind_address=f"127.0.0.1:{port}", initialization_timeout=120)
    from jaxvlm import evaluation
    from jaxvlm.evaluation import cli
    evaluation.BENCHMARKS["fakeqa"] = "evalfake"
    cli.eval_main(["fakeqa", "--data", data, "--model", model, "--out", out, "--prune", "none",
                   "debiased_fastv:layer=1,keep=32", "--batch-size", "2", "--max-new-tokens", "3",
                   "--dtype", "float32", "--no-progress"])
    print("HOST_OK", pid, flush=True)
""")


@pytest.mark.slow  # three subprocesses (2 hosts joined by jax.distributed + a one-process reference)
def test_two_hosts_write_shards_merged_in_question_order(fake_data, tmp_path):
    from test_engine_multihost import free_port

    # a Hugging Face directory: orbax refuses a checkpoint saved by one process in a 2-process restore
    llava_dir = evalfake.tiny_llava(tmp_path / "hf", hf_layout=True)

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    port = free_port()
    argvs = [[str(p), "2", str(port), str(fake_data), str(llava_dir), str(tmp_path / "hosts")] for p in range(2)]
    argvs.append(["0", "1", "0", str(fake_data), str(llava_dir), str(tmp_path / "one")])
    procs = [subprocess.Popen([sys.executable, "-c", HOSTS, *a], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for a in argvs]
    try:
        logs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 and "HOST_OK" in log for p, log in zip(procs, logs)), \
        "\n----\n".join(log[-3000:] for log in logs)
    for slug in SLUGS:
        folder = tmp_path / "hosts" / "fakeqa" / slug
        lo, hi = runner.shard_range(7, 1, 2)
        assert len((folder / "answers.1.jsonl").read_text().splitlines()) == hi - lo
        assert (folder / "answers.jsonl").read_bytes().count(b"\n") == 7
        hosts = [a["text"] for a in answers_of(tmp_path / "hosts", slug)]
        one = [a["text"] for a in answers_of(tmp_path / "one", slug)]
        assert hosts == one
        assert [a["question_id"] for a in answers_of(tmp_path / "hosts", slug)] == \
               [s.question_id for s in evalfake.read(fake_data)]
