"""experiments/plan_table.py without compiling: the mesh rule, the bf16 estimate and the largest-batch search
over stand-in plans whose totals are known."""

import os

import pytest

from experiments import plan_table as pt
from jaxvlm import plan


def text_config(name):
    return plan.read_config(os.path.join(pt.CONFIGS, pt.WORKLOADS[name].config))[0].text


@pytest.mark.parametrize("name,devices,mesh", [
    ("llava-1.5-7b", 1, (1, 1)), ("llava-1.5-7b", 8, (1, 8)), ("llava-1.5-13b", 8, (1, 8)),
    ("qwen2.5-vl-7b-image", 4, (1, 4)), ("qwen2.5-vl-7b-image", 8, (2, 4)),  # 28 / 4 heads: model 8 does not split
])
def test_mesh_splits_heads(name, devices, mesh):
    assert pt.mesh_for(text_config(name), devices) == mesh


def test_bf16_estimate_halves_weights_kv_temp():
    r = {"weights_bytes": 100, "kv_cache_bytes": 40, "temp_bytes": 60, "argument_bytes": 110}
    assert pt.bf16_estimate(r) == {"weights": 50, "kv": 20, "temp": 30, "inputs": 10, "total": 90}
    text_only = dict(r, argument_bytes=80)  # the unused vision weights are not program arguments
    assert pt.bf16_estimate(text_only)["total"] == 80


class Linear:
    """Stand-in plans: f32 weights 2 * fixed, temp 2 * per_row * batch (+ `bend` above `knee` rows)."""

    def __init__(self, fixed, per_row, bend=0.0, knee=10**9):
        self.fixed, self.per_row, self.bend, self.knee, self.compiled = fixed, per_row, bend, knee, []

    def has(self, *key):
        return key[-1] in self.compiled

    def get(self, name, prune, data, model, batch):
        self.compiled.append(batch)
        temp = self.per_row * batch + self.bend * max(0, batch - self.knee)
        return {"weights_bytes": 2 * self.fixed, "kv_cache_bytes": 0, "temp_bytes": 2 * temp,
                "argument_bytes": 2 * self.fixed}


@pytest.mark.parametrize("data", [1, 2])
def test_max_batch_is_the_largest_multiple_under_the_limit(data):
    got = pt.max_batch(Linear(10.0, 1.0), "w", None, data, 1, limit=47.5, verify=False)
    assert got["batch"] == (36 if data == 2 else 37)
    assert not got["verified"] and got["total"] <= 47.5
    assert pt.max_batch(Linear(50.0, 1.0), "w", None, data, 1, limit=47.5, verify=False) is None


def test_max_batch_verify_lowers_until_it_fits():
    """Growth steeper than the line above 40 rows: the compiled total decides, stepping down."""
    points = Linear(10.0, 1.0, bend=2.0, knee=40)
    got = pt.max_batch(points, "w", None, 1, 1, limit=60.0, verify=True)
    # the line says 50 (total 80); the line through 32 (42) and 50 (80) says 40 (50): compiled, it fits
    assert got == {"batch": 40, "total": 50.0, "verified": True, "capped": False}
    assert points.compiled[-2:] == [50, 40]
    again = pt.max_batch(points, "w", None, 1, 1, limit=60.0, verify=False)  # the compiled points are reused
    assert again == got
