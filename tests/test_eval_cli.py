"""`jaxvlm eval` / `jaxvlm score` through the command dispatcher on the benchmarks' real layouts (tests/evalfix
fixtures): every answers file the runner writes is read back by the benchmark's scorer, and `jaxvlm score`
prints exactly API.md's JSON. Tiny random models (tests/evalfake.py): their answers are noise, the plumbing real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import evalfake
from evalfix import choice_judge, classic, vqa
from jaxvlm import cli as jaxvlm_cli
from jaxvlm import evaluation
from jaxvlm.evaluation import base

LLAVA_LAYOUTS = {
    "gqa": classic.make_gqa, "pope": classic.make_pope, "mme": classic.make_mme, "scienceqa": classic.make_scienceqa,
    "textvqa": vqa.make_textvqa, "vizwiz": vqa.make_vizwiz, "vqav2": vqa.make_vqav2,
    "mmbench": choice_judge.make_mmbench, "mmbench_cn": choice_judge.make_mmbench_cn, "mmvet": choice_judge.make_mmvet,
}
# The default selection shares one compiled program (prompt bucket 128, batch 2); these two need other buckets
# (ScienceQA's text-only questions, MMBench-CN's long options) and run with -m slow.
SLOW = {"scienceqa", "mmbench_cn"}


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return evalfake.tiny_llava(tmp_path_factory.mktemp("llava") / "model")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return evalfake.tiny_qwen2_vl(tmp_path_factory.mktemp("qwen") / "model")


def run(argv, capsys) -> tuple[int, str, str]:
    rc = jaxvlm_cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def eval_and_score(bench, data, model, out, capsys, extra=()) -> tuple[list, dict]:
    rc, _, err = run(["eval", bench, "--data", str(data), "--model", str(model), "--out", str(out),
                      "--batch-size", "2", "--max-new-tokens", "3", "--dtype", "float32", "--no-progress", *extra],
                     capsys)
    assert rc == 0, err
    answers_file = Path(out) / bench / "none" / "answers.jsonl"
    answers = base.read_answers(answers_file)
    samples = evaluation.benchmark(bench).read(data, benchmark=bench)
    assert [a["prompt"] for a in answers] == [s.record_prompt for s in samples]
    assert [a["question_id"] for a in answers] == [s.question_id for s in samples]
    assert all(a[k] == v for s, a in zip(samples, answers) for k, v in s.extra.items())
    rc, stdout, err = run(["score", bench, "--data", str(data), "--answers", str(answers_file),
                           "--json", str(Path(out) / "score.json")], capsys)
    assert rc == 0, err
    printed = json.loads(stdout)
    assert printed == json.loads((Path(out) / "score.json").read_text())
    assert list(printed) == ["benchmark", "metrics", "per_question", "artifacts"]
    assert printed["benchmark"] == bench and len(printed["per_question"]) == len(answers)
    return answers, printed


@pytest.mark.parametrize("bench", [pytest.param(b, marks=pytest.mark.slow if b in SLOW else ())
                                   for b in LLAVA_LAYOUTS])
def test_llava_layout_end_to_end(bench, llava_dir, tmp_path, capsys):
    data = LLAVA_LAYOUTS[bench](tmp_path / "eval")
    answers, printed = eval_and_score(bench, data, llava_dir, tmp_path / "out", capsys)
    expected = evaluation.benchmark(bench).score(data, answers, benchmark=bench, out_dir=tmp_path / "again")
    assert printed["metrics"] == json.loads(json.dumps(expected.metrics))
    assert printed["per_question"] == json.loads(json.dumps(expected.per_question))


def test_lmms_parquet_end_to_end(llava_dir, tmp_path, capsys):
    data = classic.make_pope_parquet(tmp_path / "lmms")
    answers, printed = eval_and_score("pope", data, llava_dir, tmp_path / "out", capsys,
                                      extra=["--variant", "lmms"])
    assert len(answers) == len(evaluation.benchmark("pope").read(data, benchmark="pope", variant="lmms"))
    assert set(printed["metrics"]) >= {"adversarial", "popular", "random", "f1_mean"}


def test_video_end_to_end_on_qwen2_vl(qwen_dir, tmp_path, capsys):
    data = choice_judge.make_video(tmp_path / "eval", "msvd_qa")
    answers, printed = eval_and_score("msvd_qa", data, qwen_dir, tmp_path / "out", capsys)
    assert all(a["metadata"]["visual_tokens"] > 0 for a in answers)
    merge = Path(printed["artifacts"]["merge"])
    assert merge.is_file() and len(merge.read_text().splitlines()) == len(answers)


def test_images_on_qwen2_vl_through_its_chat_template(qwen_dir, tmp_path, capsys):
    data = classic.make_pope(tmp_path / "eval")
    answers, _ = eval_and_score("pope", data, qwen_dir, tmp_path / "out", capsys)
    visual = [a["metadata"]["visual_tokens"] for a in answers]
    assert all(v > 0 for v in visual) and len(set(visual)) > 1  # Qwen keeps each photo's aspect ratio


def test_llava_refuses_video_before_loading(llava_dir, tmp_path, capsys):
    data = choice_judge.make_video(tmp_path / "eval", "msvd_qa")
    rc, _, err = run(["eval", "msvd_qa", "--data", str(data), "--model", str(llava_dir), "--out", str(tmp_path)],
                     capsys)
    assert rc == 2 and "LLaVA-1.5 takes no video input" in err and "loading" not in err


def test_score_prints_the_contract_and_names_bad_files(tmp_path, capsys):
    data = classic.make_pope(tmp_path / "eval")
    samples = evaluation.benchmark("pope").read(data, benchmark="pope")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in classic.answers(samples, ["Yes"] * len(samples))))
    rc, stdout, _ = run(["score", "pope", "--data", str(data), "--answers", str(answers)], capsys)
    assert rc == 0
    printed = json.loads(stdout)
    direct = evaluation.benchmark("pope").score(data, base.read_answers(answers), benchmark="pope")
    assert printed == json.loads(json.dumps(direct.to_json("pope")))
    answers.write_text(answers.read_text() + "{not json\n")
    rc, stdout, err = run(["score", "pope", "--data", str(data), "--answers", str(answers)], capsys)
    assert rc == 2 and stdout == "" and f"{answers}:{len(samples) + 1}: invalid JSON" in err
    assert len(err.strip().splitlines()) == 1


def test_schedules_take_the_benchmarks_release_trend_and_are_checked_first():
    from jaxvlm import prune
    from jaxvlm.errors import UserError
    from jaxvlm.evaluation.cli import parse_schedules

    (spec, pope), = parse_schedules(["debiased_pdrop"], "pope")
    assert spec == "debiased_pdrop" and pope == prune.parse_schedule("debiased_pdrop:benchmark=pope")
    assert pope != prune.parse_schedule("debiased_pdrop")  # the release fits one trend per benchmark
    (_, named), = parse_schedules(["debiased_pdrop:benchmark=gqa"], "pope")
    assert named == prune.parse_schedule("debiased_pdrop:benchmark=gqa")
    (_, video), = parse_schedules(["debiased_pdrop"], "msvd_qa")  # no video trend: the preset's default
    assert video == prune.parse_schedule("debiased_pdrop")
    assert parse_schedules(["none", "fastv:keep=64"], "gqa") == [("none", None),
                                                                  ("fastv:keep=64", prune.parse_schedule("fastv:keep=64"))]
    with pytest.raises(UserError, match="write the same folder"):
        parse_schedules(["fastv:keep=64", "fastv:keep=64"], "gqa")


@pytest.mark.slow  # four compiles of the tiny Qwen2-VL
def test_qwen_patch_buckets_show_in_the_compile_counts(qwen_dir, tmp_path, capsys, monkeypatch):
    """POPE on photos of 60 and 64 patches (batches of 2: 120..128 patches, one patch bucket, one prompt
    bucket): one program with the buckets, one per distinct patch count without; the count and its seconds
    are printed per schedule and land in the summary."""
    import jax
    from PIL import Image

    from jaxvlm.models import qwen_vision

    data = classic.make_pope(tmp_path / "eval")
    for name, size in zip(classic.POPE_IMAGES, [(140, 84), (112, 112), (224, 56)]):  # (w, h): 3x5, 4x4, 8x2 merged
        path = data / "val2014" / name
        Image.open(path).convert("RGB").resize(size).save(path)
    counts = {}
    for per_octave in (0, 4):
        monkeypatch.setattr(qwen_vision, "BUCKETS_PER_OCTAVE", per_octave)
        jax.clear_caches()  # the 64 + 64 patch batch has the bucket's shapes: count it again
        out = tmp_path / f"out{per_octave}"
        rc, stdout, err = run(["eval", "pope", "--data", str(data), "--model", str(qwen_dir), "--out", str(out),
                               "--batch-size", "2", "--max-new-tokens", "2", "--no-progress"], capsys)
        assert rc == 0, err
        run_log = json.loads((out / "pope" / "none" / "answers.jsonl.run.json").read_text())["runs"][-1]
        counts[per_octave] = run_log["compiles"]
        assert f"{run_log['compiles']} program(s) compiled, {run_log['compile_seconds']:.1f} s)" in stdout
        assert f"none: {run_log['compiles']} program(s) compiled (" in err
        table = (out / "summary.md").read_text()
        assert f"| none | {run_log['compiles']} / {run_log['compile_seconds']:.1f} |" in table
    print(f"\nPOPE on photos of 60 / 64 patches, batches of 2: {counts[0]} programs exact, {counts[4]} bucketed")
    assert counts[4] == 1 < counts[0]
