"""Answers stores (jaxvlm.evaluation.store): identity refusal, partial-line repair, lock refusal, line keying."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvlm.errors import UserError
from jaxvlm.evaluation import base, store
from jaxvlm.evaluation.base import Sample

# question ids repeat (TextVQA's image ids): only the line tells these apart
SAMPLES = [Sample(line=i, question_id=f"q{i // 2}", prompt=f"question {i}", source=f"q.jsonl:{i + 1}")
           for i in range(6)]


def identity(tmp_path, **over):
    if not (tmp_path / "model").exists():
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "config.json").write_text('{"model_type": "llava"}')
    kw = dict(model=str(tmp_path / "model"), dtype="float32", schedule=None, variant="llava", max_new_tokens=4,
              benchmark="fakeqa", data=str(tmp_path))
    kw.update(over)
    return store.run_identity(**kw)


def records(lines):
    return [base.answer_record(SAMPLES[i], f"answer {i}", "m", f"id{i}") for i in lines]


def test_append_resume_and_line_keying(tmp_path):
    path = tmp_path / "out" / "answers.jsonl"
    ident = identity(tmp_path)
    with store.AnswerStore(path, ident, SAMPLES) as s:
        assert s.done == 0
        s.append(records([0, 1, 2]))
    with store.AnswerStore(path, ident, SAMPLES) as s:
        assert s.done == 3  # resumes at line 3 although q1 (lines 2 and 3) is half answered
        s.append(records([3, 4, 5]))
        assert s.complete
    got = base.read_answers(path)
    assert [a["prompt"] for a in got] == [x.prompt for x in SAMPLES]
    assert [a["question_id"] for a in got] == ["q0", "q0", "q1", "q1", "q2", "q2"]
    assert list(got[0]) == list(base.ANSWER_FIELDS)
    sidecar = json.loads(store.sidecar_path(path).read_text())
    assert sidecar["identity"] == ident


def test_another_identity_is_refused_and_never_mixes(tmp_path):
    path = tmp_path / "answers.jsonl"
    with store.AnswerStore(path, identity(tmp_path), SAMPLES) as s:
        s.append(records([0, 1]))
    before = path.read_bytes()
    for over in ({"schedule": ("fastv",)}, {"max_new_tokens": 8}, {"dtype": "bfloat16"}, {"variant": "lmms"}):
        with pytest.raises(UserError, match="written by another run"):
            store.AnswerStore(path, identity(tmp_path, **over), SAMPLES).open()
        assert path.read_bytes() == before
    # a changed model config changes the identity too
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llava", "x": 1}')
    with pytest.raises(UserError, match="model_config_sha256"):
        store.AnswerStore(path, identity(tmp_path), SAMPLES).open()
    with store.AnswerStore(path, identity(tmp_path, max_new_tokens=8), SAMPLES, overwrite=True) as s:
        assert s.done == 0
    assert path.read_bytes() == b""


def test_answers_without_identity_or_from_other_questions_are_refused(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps(records([0])[0]) + "\n")
    with pytest.raises(UserError, match="without a run identity"):
        store.AnswerStore(path, identity(tmp_path), SAMPLES).open()
    with store.AnswerStore(path, identity(tmp_path), SAMPLES, overwrite=True) as s:
        s.append(records([0, 1]))
    edited = [SAMPLES[0], Sample(line=1, question_id="q0", prompt="another question")] + SAMPLES[2:]
    with pytest.raises(UserError, match=r"answers.jsonl:2: .*question file changed"):
        store.AnswerStore(path, identity(tmp_path), edited).open()


@pytest.mark.parametrize("tail", [b'{"question_id": "q1", "prom', b'{"question_id": "q1"\n', b"garbage\n"])
def test_partial_last_line_is_repaired(tmp_path, tail):
    path = tmp_path / "answers.jsonl"
    with store.AnswerStore(path, identity(tmp_path), SAMPLES) as s:
        s.append(records([0, 1]))
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(tail)
    with store.AnswerStore(path, identity(tmp_path), SAMPLES) as s:
        assert s.done == 2 and s.repaired == len(tail)
        s.append(records([2]))
    assert path.read_bytes() == good + (json.dumps(records([2])[0]) + "\n").encode()


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=60), st.integers(0, 3))
def test_repair_keeps_exactly_the_complete_lines(tmp_path_factory, tail, n):
    path = tmp_path_factory.mktemp("r") / "a.jsonl"
    lines = b"".join(json.dumps({"i": i}).encode() + b"\n" for i in range(n))
    path.write_bytes(lines + tail.replace(b"\n", b""))
    store.repair_tail(path)
    kept = path.read_bytes()
    assert kept.startswith(lines) and kept.endswith(b"\n") | (kept == b"")
    assert all(json.loads(x) is not None for x in kept.splitlines())


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "answers.jsonl"
    ident = identity(tmp_path)
    with store.AnswerStore(path, ident, SAMPLES):
        with pytest.raises(UserError, match="another jaxvlm eval is writing"):
            store.AnswerStore(path, ident, SAMPLES).open()
        # and from another process, as a user running two evals would
        code = textwrap.dedent(f"""
            import sys
            from jaxvlm.errors import UserError
            from jaxvlm.evaluation import store
            try:
                store.AnswerStore({str(path)!r}, {ident!r}, []).open()
            except UserError as e:
                print("REFUSED", e); sys.exit(0)
            sys.exit(1)
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and f"pid " in proc.stdout, proc.stdout + proc.stderr
    with store.AnswerStore(path, ident, SAMPLES) as s:  # released on close
        assert s.done == 0


def test_open_stores_is_all_or_nothing(tmp_path):
    a, b = tmp_path / "a" / "answers.jsonl", tmp_path / "b" / "answers.jsonl"
    with store.AnswerStore(b, identity(tmp_path), SAMPLES) as s:
        s.append(records([0]))
    stores = [store.AnswerStore(a, identity(tmp_path), SAMPLES),
              store.AnswerStore(b, identity(tmp_path, max_new_tokens=9), SAMPLES)]
    with pytest.raises(UserError):
        with store.open_stores(stores):
            pass
    with store.AnswerStore(a, identity(tmp_path), SAMPLES):  # a's lock was released by the failed open
        pass
