"""The judge-scored sets: MM-Vet (results JSON, grade-file aggregation as mm-vet_evaluator.py) and the video QA
sets (Video-LLaVA's layout and frame sampling, merge.jsonl, judge aggregation as eval_video_qa.py), checked
against values worked out by hand."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

from evalfix import choice_judge as cj
from jaxvlm.errors import MissingExtraError
from jaxvlm.evaluation import DataError, benchmark, mmvet, video


def answers_for(samples, texts, model_id="llava-v1.5-13b"):
    return [{"question_id": s.question_id, "prompt": s.prompt, "text": t, "answer_id": "x", "model_id": model_id,
             "metadata": {}} for s, t in zip(samples, texts)]


# ------------------------------------------------------------------------------------------- MM-Vet

GRADES = {"v1_0": [1.0, 1.0], "v1_1": [0.5, 0.6], "v1_2": [0.0, 0.0], "v1_3": [0.3, 0.2], "v1_4": [1.0, 0.9]}
# capabilities (cj.MMVET): v1_0 rec; v1_1 rec+know; v1_2 rec; v1_3 rec+gen+know; v1_4 rec+math. By hand:
# per-run totals (1+.5+0+.3+1)/5 = 56.0, (1+.6+0+.2+.9)/5 = 54.0 -> total 55.0, std 1.0;
# know (.5+.3)/2, (.6+.2)/2 -> 40.0; gen 30, 20 -> 25.0; math 100, 90 -> 95.0; set {rec}: (1+0)/2 -> 50.0.
EXPECTED_MMVET = {"total": 55.0, "std": 1.0, "runs": [56.0, 54.0],
                  "capabilities": {"rec": 55.0, "know": 40.0, "gen": 25.0, "math": 95.0},
                  "capability_sets": {"rec": 50.0, "rec_know": 55.0, "rec_gen_know": 25.0, "rec_math": 95.0}}


def grade_file(path, grades=GRADES):
    path.write_text(json.dumps({k: {"model": ["gpt-4-0613"] * len(v), "content": [str(s) for s in v], "score": v}
                                for k, v in grades.items()}))
    return path


def test_mmvet_prompts(tmp_path):
    data = cj.make_mmvet(tmp_path)
    samples = mmvet.read(data)
    assert [(s.question_id, s.prompt) for s in samples[:2]] == [(0, "What animal is this?"),
                                                                 (1, "What is the person wearing?")]
    assert samples[0].image.endswith("images/v1_0.png") and samples[0].source.endswith("llava-mm-vet.jsonl:1")
    lmms = mmvet.read(data, variant="lmms")
    assert lmms[0].prompt == ("First please perform reasoning, and think step by step to provide best answer to "
                              "the following question: \n\nWhat animal is this?")
    assert benchmark("mmvet") is mmvet


def test_mmvet_export_and_aggregate(tmp_path):
    data = cj.make_mmvet(tmp_path)
    samples = mmvet.read(data)
    answers = answers_for(samples, ["A cat.", "A space suit.", "Tea.", "A rocket.", "Two."])
    result = mmvet.score(data, answers, out_dir=tmp_path / "out")
    assert result.metrics == {} and result.per_question == [None] * 5
    path = result.artifacts["results"]
    assert path == tmp_path / "out" / "results" / "llava-v1.5-13b.json"
    assert json.loads(path.read_text()) == {"v1_0": "A cat.", "v1_1": "A space suit.", "v1_2": "Tea.",
                                            "v1_3": "A rocket.", "v1_4": "Two."}
    judged = mmvet.score(data, answers, judge=grade_file(tmp_path / "grades.json"))
    assert judged.metrics == EXPECTED_MMVET
    assert list(judged.metrics["capabilities"]) == ["rec", "know", "gen", "math"]       # by frequency
    assert list(judged.metrics["capability_sets"]) == ["rec", "rec_know", "rec_gen_know", "rec_math"]
    assert judged.per_question == pytest.approx([1.0, 0.55, 0.0, 0.25, 0.95])


@given(st.lists(st.lists(st.sampled_from(["rec", "ocr", "know", "gen", "spat", "math"]), min_size=1, max_size=3,
                         unique=True), min_size=1, max_size=12),
       st.sampled_from([0.0, 0.3, 0.5, 1.0]), st.integers(1, 3))
def test_mmvet_constant_grade_scores_it_everywhere(capabilities, grade, runs):
    metrics = mmvet.aggregate({f"v1_{k}": c for k, c in enumerate(capabilities)},
                              {f"v1_{k}": [grade] * runs for k in range(len(capabilities))})
    expected = round(100 * grade, 1)
    assert metrics["total"] == pytest.approx(expected) and metrics["std"] == 0.0
    assert metrics["runs"] == pytest.approx([expected] * runs)
    assert set(metrics["capabilities"]) == {c for caps in capabilities for c in caps}
    assert all(v == pytest.approx(expected) for v in [*metrics["capabilities"].values(),
                                                      *metrics["capability_sets"].values()])


def test_mmvet_parquet(tmp_path):
    data = cj.make_mmvet_parquet(tmp_path)
    samples = mmvet.read(data)
    assert [s.question_id for s in samples] == ["v1_0", "v1_1", "v1_2", "v1_3", "v1_4"]
    assert samples[0].image.startswith(b"\x89PNG")
    result = mmvet.score(data, answers_for(samples, ["x"] * 5), out_dir=tmp_path / "o",
                         judge=grade_file(tmp_path / "g.json"))
    assert result.metrics == EXPECTED_MMVET
    assert list(json.loads(result.artifacts["results"].read_text())) == ["v1_0", "v1_1", "v1_2", "v1_3", "v1_4"]


def test_mmvet_errors(tmp_path):
    data = cj.make_mmvet(tmp_path)
    answers = answers_for(mmvet.read(data), ["x"] * 5)
    with pytest.raises(DataError, match="different numbers of runs"):
        mmvet.score(data, answers, judge=grade_file(tmp_path / "g.json", {**GRADES, "v1_0": [1.0]}))
    partial = {k: v for k, v in GRADES.items() if k != "v1_3"}
    with pytest.raises(DataError, match=r"1 question\(s\) ungraded \['v1_3'\]"):
        mmvet.score(data, answers, judge=grade_file(tmp_path / "g.json", partial))
    with pytest.raises(DataError, match="answers file has 4 lines but .* has 5"):
        mmvet.score(data, answers[:4])
    with pytest.raises(DataError, match=r"answers line 1: question_id 1, but .*jsonl has 0 there"):
        mmvet.score(data, answers[1:] + answers[:1])
    (data / "mm-vet.json").unlink()
    with pytest.raises(DataError, match="mm-vet.json: no such file"):
        mmvet.score(data, answers, judge=grade_file(tmp_path / "g.json"))
    (data / "images" / "v1_3.png").unlink()
    with pytest.raises(DataError, match=r"llava-mm-vet.jsonl:4: media file .*v1_3.png does not exist"):
        mmvet.read(data)
    questions = data / "llava-mm-vet.jsonl"
    questions.write_text(questions.read_text().replace('"v1_3.png"', '"v1_2.png"') + "{not json\n")
    with pytest.raises(DataError, match=r"llava-mm-vet.jsonl:6: invalid JSON"):
        mmvet.read(data)


# ------------------------------------------------------------------------------------------- video: frames

def test_frame_indices():
    assert video.frame_indices(12).tolist() == [0, 1, 3, 4, 6, 7, 9, 11]
    assert video.frame_indices(100).tolist() == [0, 14, 28, 42, 56, 70, 84, 99]
    assert video.frame_indices(3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2]


@given(st.integers(1, 5000))
def test_frame_indices_span_the_video(n):
    idx = video.frame_indices(n)
    assert idx.shape == (8,) and idx[0] == 0 and idx[-1] == n - 1 and (np.diff(idx) >= 0).all()


def test_load_frames_samples_the_photo_video(tmp_path):
    frames = cj.moving_frames("chelsea")                    # 12 frames, each panned 4 px further
    path = cj.write_video(tmp_path / "v.mp4", frames)
    got = video.load_frames(path)
    assert got.shape == (8, 48, 64, 3) and got.dtype == np.uint8
    errors = np.abs(got[:, None].astype(int) - frames[None].astype(int)).mean(axis=(2, 3, 4))   # (8, 12)
    assert errors.argmin(axis=1).tolist() == [0, 1, 3, 4, 6, 7, 9, 11]
    assert errors.min(axis=1).max() < 3                     # near-lossless H.264 (crf 0, yuv444p)


def test_load_frames_100_frames(tmp_path):
    bits = (np.arange(100)[:, None] >> np.arange(7)[None]) & 1             # (100, 7): frame index in binary
    frames = np.repeat(np.repeat(bits * 255, 8, axis=1)[:, None, :, None], 16, axis=1).repeat(3, axis=3)
    path = cj.write_video(tmp_path / "count.mp4", frames.astype(np.uint8))
    got = video.load_frames(path)
    read_bits = got[:, :, :, 0].reshape(8, 16, 7, 8).mean(axis=(1, 3)) > 128
    assert (read_bits * (1 << np.arange(7))).sum(axis=1).tolist() == [0, 14, 28, 42, 56, 70, 84, 99]


def test_load_frames_errors(tmp_path, monkeypatch):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(DataError, match="bad.mp4: not a decodable video"):
        video.load_frames(bad)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingExtraError, match=r"decoding videos needs .*'av'.*jaxvlm\[video\]"):
        video.load_frames(bad)


# ------------------------------------------------------------------------------------------- video: layouts

@pytest.mark.parametrize("name, subfolder", [("msvd_qa", "videos/"), ("msrvtt_qa", "videos/all/"),
                                             ("tgif_qa", "mp4/"), ("activitynet_qa", "all_test/v_")])
def test_video_layouts(tmp_path, name, subfolder):
    data = cj.make_video(tmp_path, name)
    samples = video.read(data, benchmark=name)
    assert [s.question_id for s in samples] == ["vid_cat_0", "vid_space_1", "vid_cat_2", "vid_cup_3"]
    assert samples[1].video == str(data / f"{subfolder}vid_space.mp4")
    assert samples[0].prompt == "what is the animal doing" and samples[0].image is None
    assert video.read(data, benchmark=name, variant="lmms")[0].prompt == (
        "What is the animal doing? Answer the question using a single word or phrase.")
    assert benchmark(name) is video


def test_video_pairs_by_position_and_exports_merge(tmp_path):
    data = cj.make_video(tmp_path, "msvd_qa")
    answers_json = json.loads((data / "test_a.json").read_text())
    answers_json[0]["question_id"], answers_json[1]["question_id"] = "vid_space_1", "vid_cat_0"   # ids ignored
    (data / "test_a.json").write_text(json.dumps(answers_json))
    samples = video.read(data, benchmark="msvd_qa")
    result = video.score(data, answers_for(samples, ["sleeping", "a man", "brown", "tea"]), benchmark="msvd_qa",
                         out_dir=tmp_path / "out")
    assert result.metrics == {} and result.per_question == [None] * 4
    lines = [json.loads(x) for x in result.artifacts["merge"].read_text().splitlines()]
    assert lines == [
        {"id": "vid_cat_0", "question": "what is the animal doing", "answer": "sitting", "pred": "sleeping"},
        {"id": "vid_space_1", "question": "who is in the video", "answer": "astronaut", "pred": "a man"},
        {"id": "vid_cat_2", "question": "what color is the animal", "answer": "brown", "pred": "brown"},
        {"id": "vid_cup_3", "question": "what is in the cup", "answer": "coffee", "pred": "tea"},
    ]
    assert list(lines[0]) == ["id", "question", "answer", "pred"]


JUDGE = {  # id -> the judge's reply as saved, and what eval_video_qa.py makes of it (worked out by hand)
    "vid_cat_0": [{"pred": "yes", "score": 5}, {}],          # yes, 5
    "vid_space_1": [{"pred": "no", "score": 1}, {}],         # no, 1
    "vid_cat_2": [{"pred": "Yes", "score": 4.8}, {}],        # yes, int(4.8) = 4
    "vid_cup_3": [{"pred": "yes", "score": "4.8"}, {}],      # int("4.8") fails: counted, scores 0, no verdict
    "extra_4": [{"pred": "not sure", "score": 2}, {}],       # "no" in "not sure": no, 2
    "extra_5": [{"pred": "maybe", "score": 3}, {}],          # neither yes nor no, 3
    "extra_6": "unparsable",                                 # counted, nothing else
}


def test_video_judge_aggregation(tmp_path):
    data = cj.make_video(tmp_path, "msrvtt_qa")
    answers = answers_for(video.read(data, benchmark="msrvtt_qa"), ["a", "b", "c", "d"])
    (tmp_path / "results.json").write_text(json.dumps(JUDGE))
    result = video.score(data, answers, benchmark="msrvtt_qa", judge=tmp_path / "results.json")
    assert result.metrics == pytest.approx({"accuracy": 0.5, "average_score": 15 / 7, "yes_count": 2,
                                            "no_count": 2, "count": 7})
    assert result.per_question == [{"pred": "yes", "score": 5}, {"pred": "no", "score": 1},
                                   {"pred": "yes", "score": 4}, {"pred": None, "score": None}]
    folder = tmp_path / "gpt3.5"
    folder.mkdir()
    for key, value in JUDGE.items():
        (folder / f"{key}.json").write_text(json.dumps(value))
    assert video.score(data, answers, benchmark="msrvtt_qa", judge=folder).metrics == result.metrics


def test_activitynet_parquet(tmp_path):
    data = cj.make_activitynet_parquet(tmp_path)
    samples = video.read(data, benchmark="activitynet_qa", variant="lmms")
    assert [s.question_id for s in samples] == ["v_vid_cat_0", "v_vid_space_1", "v_vid_cat_2", "v_vid_cup_3"]
    assert samples[3].video == str(data / "all_test" / "v_vid_cup.mp4")
    assert samples[3].prompt == "What is in the cup? Answer the question using a single word or phrase."
    result = video.score(data, answers_for(samples, ["x"] * 4), benchmark="activitynet_qa", out_dir=tmp_path / "o")
    assert json.loads(result.artifacts["merge"].read_text().splitlines()[3])["answer"] == "coffee"
    with pytest.raises(DataError, match="ActivityNet-QA only"):
        video.read(data, benchmark="msvd_qa")


def test_video_reader_errors(tmp_path):
    data = cj.make_video(tmp_path, "tgif_qa")
    (data / "mp4" / "vid_cup.mp4").rename(data / "mp4" / "vid_cup.avi")       # any of Video-LLaVA's extensions
    (data / "mp4" / "vid_cat.mkv").write_bytes(b"")                            # .mp4 comes first
    samples = video.read(data, benchmark="tgif_qa")
    assert samples[3].video.endswith("vid_cup.avi") and samples[0].video.endswith("vid_cat.mp4")
    (data / "mp4" / "vid_cup.avi").unlink()
    with pytest.raises(DataError, match=r"test_q.json\[3\]: media file .*vid_cup\{.mp4,.avi,.mov,.mkv\} does not"):
        video.read(data, benchmark="tgif_qa")
    qa = json.loads((data / "test_a.json").read_text())
    (data / "test_a.json").write_text(json.dumps(qa[:3]))
    with pytest.raises(DataError, match="has 4 questions but .*test_a.json has 3 answers"):
        video.read(data, benchmark="tgif_qa")
    answers = answers_for(video.read(cj.make_video(tmp_path / "b", "tgif_qa"), benchmark="tgif_qa"), "abcd")
    with pytest.raises(DataError, match=r"answers line 1: question_id 'vid_cup_3', but .*test_q.json\[0\] has"):
        video.score(tmp_path / "b" / "GPT_Zero_Shot_QA" / "TGIF_Zero_Shot_QA", answers[::-1], benchmark="tgif_qa")
    (data / "test_q.json").write_text("[{oops")
    with pytest.raises(DataError, match=r"test_q.json:1: invalid JSON"):
        video.read(data, benchmark="tgif_qa")
