"""The persistent compilation cache (jaxvlm/compile_cache.py): the flag / environment choice, refused
directories, and `jaxvlm eval --compile-cache DIR` where a second process reads every program from DIR.

Both process tests run two fresh processes (in-process caches would hide the persistent one) - one small
program through $JAXVLM_COMPILE_CACHE, and (slow) a tiny Qwen2-VL POPE eval - and count jax's own cache events
(jax.monitoring: /jax/compilation_cache/cache_hits and cache_misses), so they do not depend on timing; the
compile seconds eval reports are printed alongside (measured: 16.9 s first, 3.7 s second, 19 hits of 19).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import evalfake
from evalfix import classic
from jaxvlm import compile_cache
from jaxvlm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# A process that compiles one small program under the cache and prints jax's cache events.
JIT_SCRIPT = """
import collections, json, sys
import jax, jax.numpy as jnp
from jax import monitoring
events = collections.Counter()
monitoring.register_event_listener(lambda name, **kw: events.update([name]))
from jaxvlm import compile_cache
compile_cache.enable_from(None)  # $JAXVLM_COMPILE_CACHE
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((8, 8))).block_until_ready()
print(json.dumps({k.rsplit("/", 1)[1]: v for k, v in events.items() if "compilation_cache" in k}))
"""

# One eval process: counts the cache events of every compile, prints them and eval's compile seconds as JSON.
EVAL_SCRIPT = """
import collections, json, sys
import jax
from jax import monitoring
events = collections.Counter()
monitoring.register_event_listener(lambda name, **kw: events.update([name]))
from jaxvlm import cli
out = sys.argv[1]
rc = cli.main(["eval", "pope", "--data", sys.argv[2], "--model", sys.argv[3], "--out", out, "--compile-cache",
               sys.argv[4], "--batch-size", "2", "--limit", "2", "--max-new-tokens", "2", "--no-progress"])
sidecar = json.load(open(out + "/pope/none/answers.jsonl.run.json"))
run = sidecar["runs"][-1]
print(json.dumps({"rc": rc, "dtype": sidecar["identity"]["dtype"], "hits": events["/jax/compilation_cache/cache_hits"],
                  "misses": events["/jax/compilation_cache/cache_misses"],
                  "compiles": run["compiles"], "compile_seconds": run["compile_seconds"]}))
"""


@pytest.fixture
def recorded(monkeypatch):
    """jax.config.update calls made by compile_cache (recorded, not applied: the cache is process-wide)."""
    calls = {}
    monkeypatch.setattr(compile_cache.jax.config, "update", lambda k, v: calls.__setitem__(k, v))
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    return calls


def test_flag_then_environment_then_none(recorded, tmp_path, monkeypatch):
    assert compile_cache.enable_from(None) is None and not recorded
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
    assert compile_cache.enable_from(None) == str(tmp_path / "env") and (tmp_path / "env").is_dir()
    assert compile_cache.enable_from(str(tmp_path / "flag")) == str(tmp_path / "flag")
    assert recorded == {"jax_compilation_cache_dir": str(tmp_path / "flag"),
                        "jax_persistent_cache_min_compile_time_secs": 0.0,
                        "jax_persistent_cache_min_entry_size_bytes": 0}


def test_a_file_is_refused_by_name(recorded, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"--compile-cache .*f/sub: cannot create the directory"):
        compile_cache.enable(tmp_path / "f" / "sub")
    assert not recorded


def test_eval_refuses_a_bad_cache_dir_before_loading(recorded, tmp_path, capsys):
    from jaxvlm import cli

    (tmp_path / "f").write_text("x")
    model = tmp_path / "model"
    model.mkdir()
    rc = cli.main(["eval", "pope", "--data", str(tmp_path), "--model", str(model), "--out", str(tmp_path / "o"),
                   "--compile-cache", str(tmp_path / "f" / "cache")])
    err = capsys.readouterr().err
    assert rc == 2 and "--compile-cache" in err and "loading" not in err and len(err.strip().splitlines()) == 1


def _process(script: str, *args, env_cache=None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop(compile_cache.ENV, None)
    if env_cache is not None:
        env[compile_cache.ENV] = str(env_cache)
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_program_back(tmp_path):
    first = _process(JIT_SCRIPT, env_cache=tmp_path / "cache")
    second = _process(JIT_SCRIPT, env_cache=tmp_path / "cache")
    assert first.get("cache_misses", 0) >= 1 and first.get("cache_hits", 0) == 0
    assert second.get("cache_misses", 0) == 0 and second["cache_hits"] == first["cache_misses"]


@pytest.mark.slow  # two eval processes on a tiny Qwen2-VL (~30 s of CPU, minutes on busy cores)
def test_second_eval_process_compiles_from_the_cache(tmp_path):
    model = evalfake.tiny_qwen2_vl(tmp_path / "model")
    data = classic.make_pope(tmp_path / "eval")
    cache = tmp_path / "cache"
    first = _process(EVAL_SCRIPT, tmp_path / "out1", data, model, cache)
    entries = sorted(p.name for p in cache.iterdir())
    second = _process(EVAL_SCRIPT, tmp_path / "out2", data, model, cache)
    print(f"\ncompile cache: first process {first}, second {second}, {len(entries)} entries")
    assert first["rc"] == second["rc"] == 0 and first["dtype"] == "float32"  # --dtype default: float32 on CPU
    assert first["misses"] > 0 and first["hits"] == 0 and len(entries) >= first["misses"]
    assert second["misses"] == 0 and second["hits"] >= first["misses"]  # every program read back
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing new written
    assert second["compiles"] == first["compiles"] == 1  # eval still counts them (traces): one batch, one program
    answers = [(tmp_path / o / "pope" / "none" / "answers.jsonl").read_text() for o in ("out1", "out2")]
    assert answers[0].count("\n") == answers[1].count("\n") > 0
