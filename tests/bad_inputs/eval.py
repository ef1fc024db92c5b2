"""Catalogue: benchmark files, answers files and media as the evaluation harness reads them.

Before the harness (jaxvlm.evaluation) existed, `jaxvlm eval` read only its own JSONL: every LLaVA / lmms-eval
layout below was unreadable, so the "before" of those cases is that.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from bad_inputs import Case, expect_user_error
from bad_inputs.cli import REPO
from evalfix import choice_judge, classic
from jaxvlm import evaluation

OWN_FORMAT_ONLY = "layout unreadable (the old harness read only its own JSONL)"


def _read(name, data):
    return evaluation.benchmark(name).read(data, benchmark=name)


def _answers(name, data, texts):
    samples = _read(name, data)
    return classic.answers(samples, texts(samples))


def _gqa_ok(tmp):
    data = classic.make_gqa(tmp)
    samples = _read("gqa", data)
    result = evaluation.benchmark("gqa").score(data, classic.answers(samples, ["yes"] * len(samples)),
                                               benchmark="gqa", out_dir=tmp / "out")
    assert set(result.metrics) >= {"accuracy", "binary", "open"} and len(result.per_question) == len(samples)


def _invalid_json_line(tmp):
    data = classic.make_pope(tmp)
    path = data / "llava_pope_test.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]  # a truncated record on line 3
    path.write_text("\n".join(lines) + "\n")
    expect_user_error(lambda: _read("pope", data), r"llava_pope_test\.jsonl:3: invalid JSON")


def _missing_image(tmp):
    data = classic.make_gqa(tmp)
    first = json.loads((data / "llava_gqa_testdev_balanced.jsonl").read_text().splitlines()[0])
    (data / "data" / "images" / first["image"]).unlink()
    expect_user_error(lambda: _read("gqa", data),
                      rf"llava_gqa_testdev_balanced\.jsonl:1: media file .*{re.escape(first['image'])} does not exist")


def _record_lacks_field(tmp):
    data = classic.make_pope(tmp)
    path = data / "llava_pope_test.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    del record["text"]
    lines[1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    expect_user_error(lambda: _read("pope", data), r"llava_pope_test\.jsonl:2: record lacks field\(s\) \['text'\]")


def _unknown_benchmark(tmp):
    expect_user_error(lambda: evaluation.benchmark("vqa3"), r"unknown benchmark 'vqa3'; have gqa, mmbench")


def _unknown_variant(tmp):
    data = classic.make_pope(tmp)
    expect_user_error(lambda: evaluation.benchmark("pope").read(data, benchmark="pope", variant="qwen"),
                      r"unknown prompt variant 'qwen'")


def _not_a_benchmark_folder(tmp):
    (tmp / "empty").mkdir()
    expect_user_error(lambda: _read("pope", tmp / "empty"), r"empty: neither LLaVA's llava_pope_test\.jsonl")


def _pope_answers_incomplete(tmp):
    data = classic.make_pope(tmp)
    answers = _answers("pope", data, lambda s: ["yes"] * len(s))[:-1]
    expect_user_error(lambda: evaluation.benchmark("pope").score(data, answers, benchmark="pope"),
                      r"answers file has 5 lines but the POPE question file has 6 questions")


def _mme_answer_with_tab(tmp):
    data = classic.make_mme(tmp)
    answers = _answers("mme", data, lambda s: ["Yes"] * len(s))
    answers[3]["text"] = "Yes\tno"
    expect_user_error(lambda: evaluation.benchmark("mme").score(data, answers, benchmark="mme", out_dir=tmp / "o"),
                      r"answers line 4: answer 'Yes\\tno' holds a tab")


def _truncated_parquet(tmp):
    data = classic.make_pope_parquet(tmp)
    shard = sorted(data.rglob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:200])
    expect_user_error(lambda: _read("pope", data), rf"{re.escape(shard.name)}: not a readable parquet file")


def _video_questions_answers_mismatch(tmp):
    data = choice_judge.make_video(tmp, "msvd_qa")
    answers = json.loads((data / "test_a.json").read_text())
    (data / "test_a.json").write_text(json.dumps(answers[:-1]))
    expect_user_error(lambda: _read("msvd_qa", data), r"has 4 questions but .*test_a\.json has 3 answers")


def _video_without_decoder(tmp):
    # A setup without the video extra: one line naming it, when frames are decoded.
    data = choice_judge.make_video(tmp, "msvd_qa")
    code = ("import sys; sys.modules['av'] = None\n"
            "from jaxvlm import evaluation\n"
            "from jaxvlm.errors import UserError\n"
            f"bench = evaluation.benchmark('msvd_qa'); s = bench.read({str(data)!r}, benchmark='msvd_qa')[0]\n"
            "try:\n    bench.load_frames(s.video)\nexcept UserError as e:\n    print(e); sys.exit(2)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert re.search(r"needs the Python package 'av'.*jaxvlm\[video\]", proc.stdout), proc.stdout


def _sixteen_bit_image(tmp):
    import numpy as np
    from PIL import Image

    from jaxvlm.evaluation import feed

    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)  # 0..64491
    Image.fromarray(ramp).save(tmp / "deep.png")  # mode I;16
    rgb = feed.open_image(evaluation.Sample(line=0, question_id=0, prompt="q", image=str(tmp / "deep.png")))
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
    np.testing.assert_allclose(rgb[..., 0].astype(float), ramp / 257.0, atol=1.0)  # a ramp, not a white image


CASES = [
    Case("eval-gqa-ok", "GQA in LLaVA's layout, read and scored", OWN_FORMAT_ONLY,
         "read and scored as eval.py", _gqa_ok, ok=True),
    Case("eval-invalid-json-line", "a question file with a truncated line 3", OWN_FORMAT_ONLY,
         "DataError 'llava_pope_test.jsonl:3: invalid JSON'", _invalid_json_line),
    Case("eval-missing-image", "a question whose image file is absent", OWN_FORMAT_ONLY,
         "DataError naming file:line and the image path, before any model loads", _missing_image),
    Case("eval-record-lacks-field", "a question line without `text`", OWN_FORMAT_ONLY,
         "DataError naming file:line and the field", _record_lacks_field),
    Case("eval-unknown-benchmark", "benchmark 'vqa3'", "ValueError listing the old JSONL names",
         "DataError listing the supported names", _unknown_benchmark),
    Case("eval-unknown-variant", "prompt variant 'qwen'", "no variants", "DataError listing llava, lmms",
         _unknown_variant),
    Case("eval-not-a-benchmark-folder", "--data pointing at an empty folder", OWN_FORMAT_ONLY,
         "DataError naming both accepted layouts", _not_a_benchmark_folder),
    Case("eval-pope-answers-incomplete", "a POPE answers file one line short", "scored silently (by id)",
         "DataError: answers must be complete and in question order", _pope_answers_incomplete),
    Case("eval-mme-answer-with-tab", "an MME answer containing a tab", "n/a (MME unsupported)",
         "DataError naming the answers line (the official txt pipeline would misalign)", _mme_answer_with_tab),
    Case("eval-truncated-parquet", "an lmms-eval parquet shard cut short", OWN_FORMAT_ONLY,
         "DataError naming the shard", _truncated_parquet),
    Case("eval-video-qa-mismatch", "test_a.json one entry shorter than test_q.json", OWN_FORMAT_ONLY,
         "DataError naming test_a.json", _video_questions_answers_mismatch),
    Case("eval-16-bit-image", "a benchmark image saved as a 16-bit PNG", "decoded as a white image",
         "scaled to 8 bits (value / 257)", _sixteen_bit_image),
    Case("eval-video-without-decoder", "decoding a video without PyAV installed", "n/a (no video)",
         "one line naming jaxvlm[video]", _video_without_decoder),
]
