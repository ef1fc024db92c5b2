"""experiments.text_span: prompt builder, prunable-span Embedded, random keep, resume logic and scorer, on a
tiny random LM (tests/tiny_vlm.py's text decoder) with a character-level codec; the real LM is a slow test."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tiny_vlm
from experiments import text_span as ts
from jaxvlm import debias
from jaxvlm.engine.api import forward_embedded
from jaxvlm.errors import UserError

CODEC = ts.Codec(encode=lambda s: [ord(c) % 256 for c in s], decode=lambda ids: "".join(map(chr, ids)),
                 chat=lambda c: f"<u>{c}</u><a>")


def lm():
    params = tiny_vlm.llava()
    return params.weights["text"], params.config.text


def rows(n_facts=9, qids=range(3), seed=0):
    return [ts.encode(CODEC, ts.make_question(q, n_facts, seed)) for q in qids]


# ------------------------------------------------------------------------------------------- prompts


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 40), st.integers(0, 10_000), st.sampled_from(ts.PLACEMENTS))
def test_question_target_in_its_third(n, qid, placement):
    q = ts.make_question(qid, n, seed=3, placement=placement)
    assert q.target in ts.third_range(placement, n)
    assert len(set(q.keys)) == n and len(set(q.values)) == n
    assert all(100 <= v <= 999 for v in q.values)
    assert all(4 <= len(k) <= 6 and k.isalpha() and k.islower() for k in q.keys)
    assert ts.make_question(qid, n, seed=3, placement=placement) == q


def test_thirds_partition_the_facts():
    for n in (3, 10, 64, 95):
        got = [i for p in ts.PLACEMENTS for i in ts.third_range(p, n)]
        assert got == list(range(n))
    with pytest.raises(UserError):
        ts.third_range("first", 9)
    assert [ts.make_question(q, 9).placement for q in range(4)] == ["early", "middle", "late", "early"]


def test_encode_marks_exactly_the_fact_block():
    for r in rows(12, range(6)):
        q = r.question
        s, e = r.span
        text = CODEC.decode(list(r.ids))
        assert CODEC.decode(list(r.ids[s:e])) == "".join(f"{k}: {v}\n" for k, v in zip(q.keys, q.values))
        assert ts.INSTRUCTION in CODEC.decode(list(r.ids[:s]))
        assert f"What is the value of {q.key}?" in CODEC.decode(list(r.ids[e:]))
        assert text.endswith(f"The value of {q.key} is")
        line_end = r.fact_starts[q.target + 1] if q.target + 1 < len(q.keys) else e
        assert CODEC.decode(list(r.ids[r.fact_starts[q.target]:line_end])) == f"{q.key}: {q.value}\n"
        assert len(r.fact_starts) == len(q.keys) and r.fact_starts[0] == s


def test_token_kinds_of_the_fact_block():
    r = rows(9, [4])[0]
    kinds = ts.token_kinds(CODEC, r)
    q = r.question
    assert len(kinds) == r.span[1] - r.span[0]
    assert np.bincount(kinds, minlength=3).tolist() == [sum(map(len, q.keys)), 3 * len(q.keys), 3 * len(q.keys)]
    stats = ts.kept_stats(np.flatnonzero(kinds == 1) + r.span[0], r, kinds)  # keep exactly the digits
    assert stats["kept_kinds"] == [0.0, 1.0, 0.0] and stats["target_tokens_kept"] == 3


def test_answer_value_and_wilson():
    assert ts.answer_value(" 482.") == 482
    assert ts.answer_value("It is 17, not 3") == 17
    assert ts.answer_value(" none") is None
    lo, hi = ts.wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert ts.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert ts.wilson(10, 10)[1] == pytest.approx(1.0) and ts.wilson(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)


# ----------------------------------------------------------------------------------------- the engine


def test_embedded_marks_span_and_pads():
    rs = rows(9, range(3))
    emb = ts.embedded(np.eye(256, 8, dtype=np.float32), rs, length=300)
    assert emb.valid.shape == (3, 300) and emb.positions.shape == (1, 3, 300)
    for i, r in enumerate(rs):
        s, e = r.span
        vis = np.asarray(emb.visual[i])
        assert np.flatnonzero(vis).tolist() == list(range(s, e))
        assert np.asarray(emb.span_index[i, s:e]).tolist() == list(range(e - s))
        assert np.all(np.asarray(emb.span_index[i])[~vis] == -1) and np.all(np.asarray(emb.media[i])[~vis] == -1)
        assert np.asarray(emb.valid[i]).sum() == len(r.ids)
        assert np.all(np.asarray(emb.embeds[i, len(r.ids):]) == 0)
    assert emb.vision_cls is None


@pytest.mark.parametrize("method", ts.METHODS)
def test_pruning_keeps_text_and_k_span_tokens(method):
    w, cfg = lm()
    rs = rows(9, range(3))
    trend = debias.Trend("exponential", (1.0, 0.01, 0.0))
    emb = ts.embedded(w["embed"], rs, noise_seed=0 if method == "random" else None)
    out = forward_embedded(w, cfg, emb, prune=ts.schedule(method, 10, 2, trend))
    src, kept = np.asarray(out.src), np.asarray(out.kept[0])
    for i, r in enumerate(rs):
        s, e = r.span
        k = kept[i][kept[i] >= 0]
        assert len(k) == 10 and np.all((k >= s) & (k < e))
        survivors = set(src[i][src[i] >= 0].tolist())
        assert set(range(len(r.ids))) - set(range(s, e)) <= survivors  # every non-span token kept
        assert survivors & set(range(s, e)) == set(k.tolist())  # the span contributes exactly the kept


def test_random_keep_is_the_host_draw_and_differs_per_question():
    w, cfg = lm()
    rs = rows(9, range(3))
    emb = ts.embedded(w["embed"], rs, noise_seed=5)
    kept = np.asarray(forward_embedded(w, cfg, emb, prune=ts.schedule("random", 10, 2)).kept[0])
    noise = np.asarray(emb.vision_cls)
    for i, r in enumerate(rs):
        s, _ = r.span
        want = np.sort(s + np.argsort(-noise[i, r.span[0]:r.span[1]], kind="stable")[:10])
        assert np.sort(kept[i]).tolist() == want.tolist()
    rel = [tuple(np.sort(kept[i]) - r.span[0]) for i, r in enumerate(rs)]
    assert len(set(rel)) == 3
    with pytest.raises(ValueError, match="vision_cls"):
        forward_embedded(w, cfg, ts.embedded(w["embed"], rs), prune=ts.schedule("random", 10, 2))


def test_flat_trend_detrending_is_raw_fastv_and_steep_one_moves_the_keep():
    w, cfg = lm()
    emb = ts.embedded(w["embed"], rows(9, range(3)))
    raw = np.asarray(forward_embedded(w, cfg, emb, prune=ts.schedule("fastv", 10, 2)).kept[0])
    flat = np.asarray(forward_embedded(w, cfg, emb, prune=ts.schedule(
        "detrended", 10, 2, debias.Trend("exponential", (1.0, 0.0, 0.0)))).kept[0])
    assert np.array_equal(np.sort(raw), np.sort(flat))
    falling = debias.Trend("exponential", (1.0, -0.1, 0.0))  # dividing it out favours late tokens
    steep = np.asarray(forward_embedded(w, cfg, emb, prune=ts.schedule("detrended", 10, 2, falling)).kept[0])
    for i, r in enumerate(rows(9, range(3))):
        assert np.sort(steep[i]).tolist() == list(range(r.span[1] - 10, r.span[1]))


def test_run_batch_records_and_kept_stats():
    w, cfg = lm()
    rs = rows(9, range(3))
    recs = ts.run_batch(w, cfg, w["embed"], CODEC, rs, "fastv", 10, 2)
    for rec, r in zip(recs, rs):
        assert rec["kept"] == 10 and sum(rec["kept_thirds"]) == 10
        assert len(rec["kept_kinds"]) == 3 and all(0 <= v <= 1 for v in rec["kept_kinds"])
        assert rec["correct"] == (ts.answer_value(rec["answer"]) == r.question.value)
        assert rec["span_tokens"] == r.span[1] - r.span[0] and rec["placement"] == r.question.placement
        json.dumps(rec)
    with pytest.raises(AssertionError, match="outside the prunable span"):
        ts.kept_stats(np.array([0, rs[0].span[0]]), rs[0])


def test_collect_scores_over_the_span_and_fit():
    w, cfg = lm()
    rs = rows(9, range(4), seed=1)
    scores, pos, valid = ts.collect_scores(w, cfg, w["embed"], [rs[:2], rs[2:]], layer=2)
    spans = [r.span[1] - r.span[0] for r in rs]
    assert scores.shape == (4, max(spans))
    for j, n in enumerate(spans):
        assert pos[j, :n].tolist() == list(range(n)) and np.all(pos[j, n:] == -1)
        assert np.all(scores[j, :n] > 0) and valid[j, :n].all()
    trend, rep = ts.fit_trend(scores, pos, valid)
    assert isinstance(trend, debias.Trend) and rep["samples"] == 4


# ------------------------------------------------------------------------------------ resume and report


def test_load_results_drops_a_truncated_line_and_pending_resumes(tmp_path):
    path = tmp_path / "results.jsonl"
    recs = [{"method": "full", "keep": None, "layer": 2, "qid": q, "correct": True} for q in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"method": "fas')
    got = ts.load_results(path)
    assert got == recs and ts.load_results(tmp_path / "none.jsonl") == []
    done = {ts.result_key(r) for r in got}
    configs = [("full", None), ("fastv", 16)]
    todo = ts.pending(configs, [[0, 1, 2], [3, 4, 5]], 2, done)
    assert todo == [("fastv", 16, [0, 1, 2]), ("full", None, [3, 4, 5]), ("fastv", 16, [3, 4, 5])]
    assert ts.pending(configs, [[0, 1, 2], [3, 4, 5]], 2, done, reference=4) == [
        ("fastv", 16, [0, 1, 2]), ("full", None, [3]), ("fastv", 16, [3, 4, 5])]
    assert ts.pending(configs, [[0, 1, 2]], 3, done)[0] == ("full", None, [0, 1, 2])  # another layer


def test_summary_table_and_plot(tmp_path):
    res = []
    for q in range(6):
        p = ts.PLACEMENTS[q % 3]
        res.append({"method": "full", "keep": None, "placement": p, "correct": True})
        res.append({"method": "fastv", "keep": 16, "placement": p, "correct": p == "late",
                    "kept_thirds": [0, 2, 14], "target_tokens_kept": 8 if p == "late" else 0, "target_tokens": 8,
                    **({"kept_kinds": [0.1, 0.2, 0.3]} if q < 3 else {})})
    s = ts.summarize(res)
    assert s[("fastv", 16, "late")]["acc"] == 1.0 and s[("fastv", 16, "all")]["k"] == 2
    assert s[("fastv", 16, "all")]["thirds"] == pytest.approx([0, 0.125, 0.875])
    assert s[("fastv", 16, "all")]["target_kept"] == pytest.approx(1 / 3)
    meta = {"lm": "tiny", "n_facts": 9, "span_tokens": "80-90", "prompt_tokens": 120, "layer": 2,
            "trend": {"family": "exponential"}, "trend_ratio": 2.0, "trend_r2": 0.5, "calibration_prompts": 4}
    md = ts.table_md(s, meta)
    assert "| full | all | 1.00" in md and "| fastv | 16 | 0.00" in md and "| fastv | 16 | 0.00 | 0.12 | 0.88 | 0.33 | 0.10 | 0.20 | 0.30 (3) |" in md
    ts.plot(s, tmp_path / "p.png", "t")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_cli_rejects_bad_flags(tmp_path):
    for argv in (["--budgets", "a,b"], ["--methods", "oracle"], ["--budgets", "0"], ["--samples", "0"]):
        with pytest.raises(UserError):
            ts.main(["--out", str(tmp_path), *argv])


# --------------------------------------------------------------------------------------------- real LM


@pytest.mark.slow
def test_real_qwen_answers_two_questions_unpruned():
    from experiments import real_lm

    try:
        model = real_lm.load_lm("qwen2.5")
        codec = ts.hf_codec(real_lm.tokenizer("qwen2.5"))
    except UserError as e:
        pytest.skip(f"Qwen2.5-0.5B weights unavailable: {e}")
    w = {k: (jnp.asarray(v) if k != "layers" else {n: jnp.asarray(a) for n, a in v.items()})
         for k, v in model.weights.items()}
    rs = [ts.encode(codec, ts.make_question(q, 16, seed=7)) for q in range(2)]
    recs = ts.run_batch(w, model.cfg, model.weights["embed"], codec, rs, "full", None, 2)
    assert all(r["correct"] for r in recs), recs
