"""dev/device_check.py on CPU: a broken attention path fails the check (exit 1, a failure entry naming it) while a
healthy one passes; the device-kind peak table; the kernel masks have the structure their names promise; the
whole `--smoke` run end to end in a subprocess (slow)."""

import importlib.util
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxvlm import attention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "dev", "device_check.py")
_spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
dc = sys.modules.setdefault("device_check", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(dc)


def kernels_only(tmp_path, *flags):
    code = dc.main(["--smoke", "--in-process", "--sections", "kernels", "--out", str(tmp_path), *flags])
    return code, json.loads((tmp_path / "device_check.json").read_text())


def test_broken_path_fails_the_check(tmp_path, monkeypatch, capsys):
    flags = ("--paths", "chunked,xla", "--masks", "right_pad")
    code, ok = kernels_only(tmp_path, *flags)
    rows = ok["sections"]["kernels"]["rows"]
    assert code == 0 and not ok["failures"] and len(rows) == 4  # 2 paths x 2 dtypes
    assert all(r["ok"] and r["max_err"] < 2e-2 for r in rows)
    assert max(r["max_err"] for r in rows if r["dtype"] == "float32") < 1e-5

    monkeypatch.setattr(attention, "chunked_attention", lambda q, k, v, mask, **kw: jnp.zeros_like(q))
    code, bad = kernels_only(tmp_path, *flags)
    assert code == 1
    broken = [r for r in bad["sections"]["kernels"]["rows"] if not r["ok"]]
    assert {(r["path"], r["dtype"]) for r in broken} == {("chunked", "bfloat16"), ("chunked", "float32")}
    assert all(r["max_err"] > 0.5 for r in broken)
    assert len(bad["failures"]) == 2 and all("kernels: chunked" in f for f in bad["failures"])
    assert "FAILED: 2 failure(s)" in capsys.readouterr().out


def test_splash_interpret_twice_same_shape():
    """A second program of one shape reuses the cached splash kernel (it once held the first trace's tracers)."""
    sizes = dc.dataclasses.replace(dc.SMOKE, kernel_paths=("splash_interpret",), kernel_masks=("right_pad",))
    res = dc.run_kernels(sizes)
    assert not res["failures"], res["failures"]


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v4", 275e12),
    ("TPU v5p", 459e12), ("cpu", None), ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_flops(kind, peak):
    assert dc.peak_flops(kind) == peak


@given(b=st.integers(1, 3), t=st.integers(4, 40).map(lambda x: 16 * x), seed=st.integers(0, 10))
def test_kernel_masks_structure(b, t, seed):
    m = dc.kernel_masks(b, t, seed)
    slot = np.arange(t)
    left, _, causal_l = m["left_pad"]
    right, _, causal_r = m["right_pad"]
    pruned, _, _ = m["pruned"]
    win, seg, causal_w = m["windows"]
    assert causal_l and causal_r and not causal_w
    for r in range(b):
        n = right[r].sum()
        assert np.array_equal(right[r], slot < n) and np.array_equal(left[r], slot >= t - n)
        assert n == (t - t // 4 if r % 2 == 0 else t)
        assert not np.any(pruned[r] & ~right[r]) and pruned[r, 0]
        assert np.all(np.diff(seg[r]) >= 0) and seg[r, -1] > seg[r, 0]  # contiguous, several windows
        assert np.array_equal(win[r], right[r])
    # Pruned: the kept positions are not a prefix of the row (holes inside the visual span).
    assert any(not np.array_equal(pruned[r], slot < pruned[r].sum()) for r in range(b))


@pytest.mark.slow
def test_smoke_end_to_end(tmp_path):
    """The CLI in a subprocess (child processes per section): all three sections in the JSON, every path
    within tolerance, exit 0."""
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)
    r = json.loads((tmp_path / "device_check.json").read_text())
    assert r["backend"] == "cpu" and r["smoke"] and set(r["sections"]) == {"kernels", "planner", "mfu"}
    rows = r["sections"]["kernels"]["rows"]
    cases = {(x["path"], x["dtype"], x["mask"]) for x in rows}
    assert len(cases) == len(rows) == 4 * 2 * 4  # paths x dtypes x masks
    assert all(x["ok"] for x in rows) and not r["failures"], r["failures"]
    assert all(x["chosen"] == ("xla" if x["mask"] == "windows" else "blocked") for x in rows)
    assert proc.returncode == 0, proc.stdout[-3000:]

    none, fastv = r["sections"]["planner"]
    assert none["prune"] == "none" and fastv["prune"] == dc.FASTV
    assert none["predicted_total_bytes"] >= none["predicted"]["weights_bytes"] > 0
    assert none["measured_peak_bytes"] is None and none["ratio"] is None  # CPU: no allocator statistics
    assert fastv["predicted"]["segment_tokens"] == [192, 128]

    mfu = r["sections"]["mfu"]
    base, pruned = mfu["rows"]
    assert mfu["peak_flops"] is None and base["mfu"] is None and base["flops"] > 0 and base["prefill_s"] > 0
    assert pruned["segment_tokens"] == [704, 192] and 0 < pruned["flops_ratio"] < 1
    for heading in ("1. attention paths", "2. planner", "3. prefill MFU", "n/a"):
        assert heading in proc.stdout
