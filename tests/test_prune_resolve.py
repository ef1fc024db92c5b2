"""Ratio-defined stage counts resolved by the engine at plan time (Stage.resolve, jaxvlm/prune/base.py).

Unit: resolution arithmetic, chaining, hashability, debiased forwarding, errors. End to end: the same
`prune.pdrop/illava/sparsevlm/fastv(drop_ratio=)` schedules (no n_visual) on a tiny Qwen2-VL with 83 visual
tokens (dynamic resolution) and on a tiny LLaVA (576), where they must give exactly what the explicit
`n_visual=576` schedules give (same compiled program).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import jaxvlm
from jaxvlm import prune
from jaxvlm.engine import api
from jaxvlm.engine.prefill import make_plan, resolve_stage

CFG = SimpleNamespace(num_layers=32)


def resolved(schedule, counts):
    return make_plan(CFG, schedule, 1024, counts, 0).stages


# ---------------------------------------------------------------------------------------------- unit


def test_resolution_counts():
    (st,) = prune.pdrop(layers=(1,), ratios=(.5,))
    assert st.keep is None and st.resolve(83, 83).keep == 41
    assert resolved(prune.pdrop(layers=(1,), ratios=(.5,)), [83])[0].keep == 41
    # PyramidDrop ratios are fractions of the ORIGINAL count, not of the tokens entering each stage
    assert [s.keep for s in resolved(prune.pdrop(layers=(1, 2, 3), ratios=(.5, .25, .125)), [83])] == [41, 20, 10]
    # iLLaVA: r of the tokens entering each stage (83 -> r 25 -> 58 -> r 17 -> 41)
    il = resolved(prune.illava(layers=(3, 4), keep_ratio=.7), [83])
    assert [(s.n_in, s.r, s.keep) for s in il] == [(83, 25, 58), (58, 17, 41)]
    assert resolved(prune.fastv(drop_ratio=.5), [83])[0].keep == 42
    assert resolved(prune.divprune(ratio=.1), [83])[0].keep == 8
    sv = resolved(prune.sparsevlm(layers=(0, 1), budgets=(40, 20)), [83])
    assert [(s.n_in, s.keep) for s in sv] == [(83, 42), (42, 21)]
    # rows with different counts: ratios resolve against the batch's smallest visual count (not floored to 64)
    assert resolved(prune.pdrop(layers=(1,), ratios=(.5,)), [83, 200])[0].keep == 41


def test_llava_counts_unchanged():
    """Resolved at 576 == built with n_visual=576 (same values, so the same compiled program)."""
    cases = [
        (prune.pdrop(layers=(2, 10, 20), ratios=(.32, .16, .08)), [184, 92, 46]),
        (prune.pdrop(), [288, 144, 72]),
        (prune.sparsevlm(128), [312, 117, 39]),
        (prune.illava(), [403]),
        (prune.fastv(drop_ratio=.75), [144]),
        (prune.divprune(), [56]),
        (prune.debiased_pdrop(), [184, 92, 46]),
        (prune.debiased_sparsevlm(), [312, 117, 39]),
    ]
    explicit = [prune.pdrop(layers=(2, 10, 20), ratios=(.32, .16, .08), n_visual=576), prune.pdrop(n_visual=576),
                prune.sparsevlm(128, n_visual=576), prune.illava(n_visual=576),
                prune.fastv(drop_ratio=.75, n_visual=576), prune.divprune(n_visual=576),
                prune.debiased_pdrop(n_visual=576),
                prune.debiased_sparsevlm(n_visual=576)]
    for (sched, keeps), exp in zip(cases, explicit):
        got = resolved(sched, [576, 600])
        # A debiased preset's default trend is bound to the model at plan time (Debiased.for_model: the release
        # trend for a Llama LM such as CFG); the counts must be the explicit stages' exactly.
        exp = tuple(st.for_model(CFG) if hasattr(st, "for_model") else st for st in exp)
        assert got == exp and [s.keep for s in got] == keeps
        assert resolved(exp, [576]) == exp  # explicit stages pass through untouched
    assert [s.budget for s in resolved(prune.sparsevlm(128), [576])] == [303, 110, 36]
    assert resolved(prune.illava(), [576])[0].r == 173


def test_resolved_schedules_hashable_and_static():
    a = make_plan(CFG, prune.pdrop(layers=(1, 2), ratios=(.5, .25)), 1024, [83], 4)
    b = make_plan(CFG, prune.pdrop(layers=(1, 2), ratios=(.5, .25)), 1024, [83], 4)
    c = make_plan(CFG, prune.pdrop(layers=(1, 2), ratios=(.5, .25)), 1024, [90], 4)
    assert a == b and hash(a) == hash(b) and len({a, b, c}) == 2
    assert all(isinstance(s.keep, int) for s in a.stages)
    for sched in (prune.debiased_pdrop(), prune.debiased_sparsevlm(), prune.debiased_illava(),
                  prune.debiased(prune.fastv(drop_ratio=.5), trend=jaxvlm.debias.release_trend("fastv"))):
        plan = make_plan(CFG, sched, 2048, [576], 0)
        hash(plan)
        first = plan.stages[0]
        assert isinstance(first, prune.Debiased) and isinstance(first.keep, int)  # the wrapper survives
        assert first.inner == resolve_stage(sched[0].inner, 576, 576)


def test_resolution_errors():
    with pytest.raises(ValueError, match="budget 303 .* exceeds the 83 visual tokens"):
        resolved(prune.sparsevlm(128), [83])  # SparseVLM budgets are absolute token counts
    with pytest.raises(ValueError, match="keeps no token of 83"):
        resolved(prune.pdrop(layers=(1,), ratios=(.01,)), [83])
    with pytest.raises(ValueError, match="non-increasing"):
        prune.pdrop(layers=(2, 4), ratios=(.2, .5))

    class NoResolve(prune.FastV):
        resolve = None

    with pytest.raises(ValueError, match="unresolved"):
        resolved((NoResolve(layer=2, keep=None, drop_ratio=.5),), [83])


# ------------------------------------------------------------------------------------- end to end: Qwen


@pytest.fixture(scope="module")
def qwen():
    import jax.numpy as jnp

    import qwen_reference as R
    from converters import DictReader, convert, table_for
    from jaxvlm.model import VLM
    from jaxvlm.models import qwen_vl

    model, d = R.build("qwen2_vl", text={"num_hidden_layers": 3})
    cfg = qwen_vl.parse_config(d)
    weights = convert(table_for(cfg), qwen_vl.weight_shapes(cfg), DictReader(model.state_dict()), place=jnp.asarray)
    rng = np.random.default_rng(0)
    g1, g2 = (1, 10, 14), (1, 16, 12)  # 35 + 48 = 83 visual tokens
    row = R.text(rng, 30) + R.media_span(R.IMAGE, g1) + R.text(rng, 10) + R.media_span(R.IMAGE, g2) + R.text(rng, 12)
    inputs = {"input_ids": np.asarray([row], np.int64), "attention_mask": np.ones((1, len(row)), np.int64),
              "image_grid_thw": np.array([g1, g2]),
              "pixel_values": np.concatenate([R.image_patches(rng, g) for g in (g1, g2)])}
    assert int((inputs["input_ids"] == R.IMAGE).sum()) == 83
    return VLM(weights=weights, config=cfg), inputs, R.IMAGE


def _same_as_explicit(params, inputs, sched, explicit, keeps, image, max_new=3):
    """Generate with `sched` (counts resolved at plan time) and with the explicit schedule: same program (no new
    trace), same tokens and kept sets; kept sets of the resolved sizes, image tokens only."""
    out = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=max_new)
    assert [k.shape[1] for k in out.kept] == keeps
    ids = np.asarray(inputs["input_ids"])
    for k in out.kept:
        for r in range(ids.shape[0]):
            kr = np.asarray(k[r])
            assert (kr >= 0).all() and (ids[r, kr] == image).all() and len(set(kr.tolist())) == len(kr)
    n = api.TRACE_COUNTS["generate"]
    ref = jaxvlm.generate(params, **inputs, prune=explicit, max_new_tokens=max_new)
    assert api.TRACE_COUNTS["generate"] == n  # the resolved schedule IS the explicit one: no new program
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    for a, b in zip(out.kept, ref.kept):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["pdrop+illava", "sparsevlm"])
def test_ratio_schedules_on_qwen2_vl(qwen, name):
    params, inputs, image = qwen
    if name == "pdrop+illava":  # 83 -> pdrop .5: 41 -> iLLaVA .7 of 41: r 12, keep 29
        sched = prune.pdrop(layers=(1,), ratios=(.5,)) + prune.illava(layers=(2,), keep_ratio=.7)
        explicit = (prune.pdrop(layers=(1,), ratios=(.5,), n_visual=83)
                    + prune.illava(layers=(2,), keep_ratio=.7, n_visual=41))
        keeps = [41, 29]
    else:  # SparseVLM's budgets are absolute (must fit the 83 tokens); the recycling slots resolve (+2, +1)
        sched = prune.sparsevlm(layers=(0, 1), budgets=(40, 20))
        explicit = prune.sparsevlm(layers=(0, 1), budgets=(40, 20), n_visual=83)
        keeps = [42, 21]
    _same_as_explicit(params, inputs, sched, explicit, keeps, image)


def test_default_sparsevlm_budget_too_large_on_qwen(qwen):
    params, inputs, _ = qwen
    with pytest.raises(ValueError, match="exceeds the 83 visual tokens"):
        jaxvlm.generate(params, **inputs, prune=prune.sparsevlm(128, layers=(0, 1, 2)), max_new_tokens=1)


# ------------------------------------------------------------------------------------ end to end: LLaVA


def test_ratio_schedules_on_llava_unchanged():
    """Tiny LLaVA (576 visual tokens): n_visual-free schedules give the same tokens and kept sets as the explicit
    n_visual=576 ones (the pre-existing behaviour), through the same compiled program. One schedule chains the
    three methods: SparseVLM 303 (+9 recycled) -> iLLaVA .7 of 312 (r 94) -> PyramidDrop .16 of 576."""
    from llava_reference import IMAGE_TOKEN, build, make_inputs

    _, params, config = build(gqa=True, text_layers=4, seed=3)
    inputs = make_inputs(config, lengths=(610,), padding="left", seed=1)
    sched = (prune.sparsevlm(layers=(0,), budgets=(303,)) + prune.illava(layers=(2,), keep_ratio=.7)
             + prune.pdrop(layers=(3,), ratios=(.16,)))
    explicit = (prune.sparsevlm(layers=(0,), budgets=(303,), n_visual=576)
                + prune.illava(layers=(2,), keep_ratio=.7, n_visual=312)
                + prune.pdrop(layers=(3,), ratios=(.16,), n_visual=576))
    _same_as_explicit(params, inputs, sched, explicit, [312, 218, 92], IMAGE_TOKEN, max_new=2)
