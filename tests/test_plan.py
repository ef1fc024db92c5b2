"""`jaxvlm plan` on tiny configs: per-device numbers from the compiled program, exact weight and KV bytes,
FLOPs that follow the schedule, N planned devices in a subprocess, one-line errors for bad flags."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvlm import cli, plan
from jaxvlm.model import family_module
from jaxvlm.models import decoder


def tiny_llava(tmp_path, **text):
    """The real llava-1.5 config with tiny widths (still 576 visual tokens of a 336-pixel image)."""
    d = json.load(open(plan.__file__.replace("plan.py", "data/configs/llava-1.5-7b-hf.json")))
    d["text_config"].update(dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=128), **text)
    d["vision_config"].update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    return path


def run(args, capsys):
    code = cli.main(["plan", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_numbers(tmp_path, capsys):
    cfg_path = tiny_llava(tmp_path)
    base = [cfg_path, "--batch", 2, "--prompt-tokens", 640, "--max-new-tokens", 4, "--dtype", "float32"]
    code, out, _ = run(base + ["--json", tmp_path / "a.json"], capsys)
    assert code == 0 and "per device" in out
    r = json.loads((tmp_path / "a.json").read_text())
    config, _ = plan.read_config(str(tmp_path))  # the directory form reads the same config.json
    shapes = family_module(config.family).weight_shapes(config)
    n_params = sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple)))
    assert r["weights_bytes"] == 4 * n_params
    t = config.text
    assert r["bucket"] == 640
    assert r["kv_cache_bytes"] == 2 * t.num_layers * 2 * t.num_kv_heads * (640 + 4) * t.head_dim * 4
    assert r["temp_bytes"] >= r["kv_cache_bytes"] > 0
    assert r["total_bytes"] >= r["argument_bytes"] + r["temp_bytes"] - 1
    assert r["prefill_flops"] > r["decode_flops"] > 0 and r["compile_seconds"] > 0

    run(base + ["--prune", "fastv:layer=2,keep=64", "--json", tmp_path / "f.json"], capsys)
    f = json.loads((tmp_path / "f.json").read_text())
    assert f["segment_tokens"] == [640, 128] and f["kv_cache_bytes"] < r["kv_cache_bytes"]
    assert f["prefill_flops"] < r["prefill_flops"]
    # Text-only prompt: no vision tower, fewer FLOPs; decode FLOPs grow with max_new.
    run([cfg_path, "--batch", 2, "--prompt-tokens", 640, "--max-new-tokens", 8, "--images", 0, "--dtype", "float32",
         "--json", tmp_path / "t.json"], capsys)
    tx = json.loads((tmp_path / "t.json").read_text())
    assert tx["prefill_flops"] < r["prefill_flops"] and tx["decode_flops"] > r["decode_flops"]


def test_temp_holds_one_layer_weight_copy(tmp_path):
    """XLA:CPU copies a layer's weights out of the stack to multiply with them; the program holds one such copy at
    a time (the scanned layer's), not also the statically indexed last layer's from the program start (which
    doubled this; decoder.after_value)."""
    config, _ = plan.read_config(str(tiny_llava(tmp_path, hidden_size=256, num_attention_heads=4,
                                                num_key_value_heads=4, intermediate_size=8192)))
    r = plan.plan_program(config, 1, 64, 4, images=0, dtype="float32")
    t = config.text
    layer_bytes = 4 * (3 * t.hidden_size * t.intermediate_size + 4 * t.hidden_size ** 2)
    assert r["temp_bytes"] - r["kv_cache_bytes"] < 1.5 * layer_bytes


@settings(max_examples=30, deadline=None)
@given(value=st.integers(0, 2 ** 31 - 1), x=st.floats(allow_nan=True, allow_infinity=True, width=32))
def test_after_value_is_the_value(value, x):
    assert int(decoder.after_value(value, jnp.full((2, 3), x, jnp.float32))) == value


def test_plan_devices_in_subprocess(tmp_path, capsys):
    """4 forced devices as data=2 x model=2: 2 rows and half the kv heads per device, weights split."""
    cfg_path = tiny_llava(tmp_path)
    code, out, _ = run([cfg_path, "--batch", 4, "--prompt-tokens", 600, "--max-new-tokens", 2, "--dtype", "float32",
                        "--devices", 4, "--mesh", "data=2,model=2", "--json", tmp_path / "d.json"], capsys)
    assert code == 0, out
    r = json.loads((tmp_path / "d.json").read_text())
    t = plan.read_config(str(cfg_path))[0].text
    assert r["devices"] == 4 and r["mesh"] == {"data": 2, "model": 2} and r["backend"] == "cpu"
    assert r["kv_cache_bytes"] == 2 * t.num_layers * 2 * (t.num_kv_heads // 2) * (640 + 2) * t.head_dim * 4
    full = plan.weight_bytes_per_device(plan.abstract_params(plan.read_config(str(cfg_path))[0], "float32").weights)
    assert full / 2 <= r["weights_bytes"] < 0.7 * full  # embed, lm_head, heads, MLP split; norms, CLIP heads=2 too
    code, out, _ = run([cfg_path, "--batch", 4, "--prompt-tokens", 600, "--max-new-tokens", 2, "--dtype", "float32",
                        "--devices", 4, "--mesh", "data=2,model=2", "--fsdp", "--json", tmp_path / "f.json"], capsys)
    f = json.loads((tmp_path / "f.json").read_text())
    assert code == 0 and f["fsdp"] and "(fsdp)" in out, out
    assert full / 4 <= f["weights_bytes"] < 0.75 * r["weights_bytes"]  # the matrices split over data too


@pytest.mark.parametrize("args,message", [
    (["--batch", "x"], "invalid int value"),
    (["--mesh", "data=two"], "--mesh"),
    (["--mesh", "data=2,model=1"], "--devices"),
    (["--mesh", "model=3", "--devices", "2"], "data*model = 3"),
    (["--prompt-tokens", "100"], "--prompt-tokens 100"),
    (["--prune", "nosuch"], "unknown pruning method"),
    (["--dtype", "int8"], "invalid choice"),
])
def test_bad_flags_one_line_exit_2(tmp_path, capsys, args, message):
    code, _, err = run([tiny_llava(tmp_path), *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_missing_config(tmp_path, capsys):
    code, _, err = run([tmp_path / "nope"], capsys)
    assert code == 2 and "no such file" in err
    (tmp_path / "d").mkdir()
    code, _, err = run([tmp_path / "d"], capsys)
    assert code == 2 and "no config.json" in err
